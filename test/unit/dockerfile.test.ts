// deploy/Dockerfile and docker-compose.yml, read statically (no container
// daemon on the build machine, so the image is not built here): the two
// variants exist as targets, the final stages install nothing, carry no
// compiler and run as the non-root uid the Kubernetes manifests ask for, and
// every path a final stage copies from its build is one the project's build
// produces (checked against this checkout's build), so that the commands the
// manifests and Compose run exist in the image.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { parse } from 'yaml';

import { podSpecOf, render } from '../helpers/kustomize.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

interface Stage {
  from: string;
  name: string;
  lines: string[]; // instructions, continuation lines joined
}

function stages(): Stage[] {
  const text = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const out: Stage[] = [];
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (!line || line.startsWith('#')) continue;
    const m = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (m) out.push({ from: m[1], name: m[2] ?? '', lines: [] });
    else out.at(-1)?.lines.push(line);
  }
  return out;
}

test('Dockerfile: CPU and CUDA targets, multi-stage, non-root, no compilers in the final stages', () => {
  const all = stages();
  for (const variant of ['cpu', 'cuda']) {
    const s = all.find((x) => x.name === variant);
    assert.ok(s, `a stage named ${variant}`);
    const build = `build-${variant}`;
    assert.ok(all.some((x) => x.name === build), `a ${build} stage`);
    // Nothing is installed in the final stage, and the build checks that no compiler came with the base image.
    assert.ok(!s.lines.some((l) => /apt-get install|npm (ci|install)/.test(l)), `${variant}: installs nothing`);
    assert.ok(s.lines.some((l) => /! command -v g\+\+/.test(l) && /! command -v nvcc/.test(l)), `${variant}: asserts no compiler`);
    assert.ok(s.lines.includes('USER 10001:10001'), `${variant}: runs as uid 10001`);
    assert.ok(s.lines.includes('ENTRYPOINT ["node"]'));
    // Every COPY --from=build-… copies something the project's build makes.
    const copies = s.lines.filter((l) => l.startsWith('COPY --from=build'));
    assert.ok(copies.length >= 6, variant);
    for (const c of copies) {
      const [, from, src] = /^COPY --from=(\S+) \/src\/(\S+) /.exec(c)!;
      assert.equal(from, build, `${variant} copies from its own build: ${c}`);
      assert.ok(existsSync(join(ROOT, src)), `${c}: ${src} is not produced by the build`);
    }
    for (const need of ['dist', 'proto', 'node_modules', 'models/smartkv-ref-8k', 'models/smartkv-ref', 'native/build/Release/smartkv_native.node'])
      assert.ok(copies.some((c) => c.includes(`/src/${need} `)), `${variant} copies ${need}`);
  }
  const cudaBuild = all.find((x) => x.name === 'build-cuda')!;
  assert.match(cudaBuild.from, /nvidia\/cuda:.*-devel-/);
  assert.ok(cudaBuild.lines.some((l) => l.includes('--CDSMARTKV_CUDA=ON')));
  assert.ok(all.find((x) => x.name === 'build-cpu')!.lines.some((l) => l.includes('--CDSMARTKV_CUDA=OFF')));
});

test('the commands of Compose and of the Kubernetes manifests exist in the image', () => {
  const compose = parse(readFileSync(join(ROOT, 'deploy', 'docker-compose.yml'), 'utf8'));
  const scripts: string[] = [];
  for (const [name, svc] of Object.entries(compose.services as Record<string, { image: string; command?: string[]; build?: { target: string } }>)) {
    if (!svc.image.startsWith('smartkv')) continue;
    scripts.push(svc.command![0]);
    if (svc.build) assert.equal(svc.build.target, 'cpu', name);
  }
  for (const dir of ['base', 'overlays/cpu'])
    for (const o of render(join(ROOT, 'deploy', 'k8s', dir))) {
      for (const c of ((podSpecOf(o)?.containers as { image: string; command?: string[] }[]) ?? []).filter((c) => c.image.startsWith('smartkv:'))) {
        assert.match(c.image, /^smartkv:[\w.]+-(cpu|cuda)$/);
        scripts.push(c.command![1]);
      }
    }
  assert.ok(scripts.length >= 7);
  for (const s of scripts) assert.ok(existsSync(join(ROOT, s)), `${s} (the image holds the build's dist/ at /app/dist)`);
});
