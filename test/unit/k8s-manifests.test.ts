// deploy/k8s without a cluster: every manifest parses and validates against
// the Kubernetes API schemas (kubernetes-models, plus unknown fields); the
// base and the CPU overlay render (test/helpers/kustomize.ts); and what the
// rendered objects say agrees with the services: every option in a
// container's args is one the service accepts, every $(VAR) is defined, the
// probes ask grpc.health.v1 on the port the service listens on, the grace
// period covers the service's drain, the orchestrator's --cache-dns names the
// headless Service, and Prometheus keeps exactly the three services.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { parse } from 'yaml';

import { validateObject } from '../helpers/k8s-schema.js';
import { KustomizeError, mergePatch, podSpecOf, readYaml, render, type K8sObject } from '../helpers/kustomize.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..'); // dist/test/unit → repo
const K8S = join(ROOT, 'deploy', 'k8s');
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- manifests are untyped YAML
type Obj = Record<string, any>;

const base = render(join(K8S, 'base'));
const cpu = render(join(K8S, 'overlays', 'cpu'));
const find = (objs: K8sObject[], kind: string, name: string): Obj => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(o, `${kind}/${name} in the rendering`);
  return o;
};
const pod = (o: Obj): Obj => podSpecOf(o) as Obj;
const params = (objs: K8sObject[]) => find(objs, 'ConfigMap', 'smartkv-params').data as Record<string, string>;

/** The SmartKV workloads: role → (kind, name, main.js). */
const ROLES = {
  cache: { kind: 'StatefulSet', name: 'smartkv-cache', main: 'dist/services/cache/main.js' },
  allocator: { kind: 'Deployment', name: 'smartkv-allocator', main: 'dist/services/allocator/main.js' },
  orchestrator: { kind: 'Deployment', name: 'smartkv-orchestrator', main: 'dist/services/orchestrator/main.js' },
} as const;

function container(objs: K8sObject[], role: keyof typeof ROLES): Obj {
  const r = ROLES[role];
  const c = pod(find(objs, r.kind, r.name))!.containers as Obj[];
  assert.equal(c.length, 1);
  return c[0];
}

/** The container's args with every $(VAR) replaced as the kubelet would: literal env values and
 * ConfigMap keys; downward-API values stay as <fieldPath>. */
function effectiveArgs(objs: K8sObject[], c: Obj): string[] {
  const env = new Map<string, string>();
  for (const e of (c.env as Obj[]) ?? []) {
    if (e.value !== undefined) env.set(e.name, String(e.value));
    else if (e.valueFrom?.configMapKeyRef) {
      const ref = e.valueFrom.configMapKeyRef;
      env.set(e.name, (find(objs, 'ConfigMap', ref.name).data as Record<string, string>)[ref.key]);
    } else env.set(e.name, `<${e.valueFrom?.fieldRef?.fieldPath ?? e.valueFrom?.resourceFieldRef?.resource}>`);
  }
  return (c.args as string[]).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_m, v: string) => env.get(v) ?? `$(${v})`));
}

function option(args: string[], name: string): string | undefined {
  const a = args.find((x) => x === `--${name}` || x.startsWith(`--${name}=`));
  if (a === undefined) return undefined;
  return a.includes('=') ? a.slice(a.indexOf('=') + 1) : args[args.indexOf(a) + 1];
}

const helpCache = new Map<string, Set<string>>();
/** The options a service accepts, from its own --help. */
function accepted(main: string): Set<string> {
  if (!helpCache.has(main)) {
    const out = execFileSync(process.execPath, [join(ROOT, main), '--help'], { encoding: 'utf8' });
    helpCache.set(main, new Set([...out.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1])));
  }
  return helpCache.get(main)!;
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? yamlFiles(join(dir, e.name)) : e.name.endsWith('.yaml') ? [join(dir, e.name)] : []));
}

describe('deploy/k8s', () => {
  test('every manifest parses; every base resource and every rendered object validates against the API schemas', () => {
    const files = yamlFiles(K8S);
    assert.ok(files.length >= 10, files.join(', '));
    for (const f of files) assert.ok(readYaml(f).length > 0, f);
    for (const f of [...yamlFiles(join(K8S, 'base')), join(K8S, 'model-pvc.example.yaml')].filter((f) => !f.endsWith('kustomization.yaml')))
      for (const o of readYaml(f)) assert.deepEqual(validateObject(o), [], f);
    for (const [name, objs] of [['base', base], ['cpu overlay', cpu]] as const) {
      assert.equal(objs.length, 19, name);
      for (const o of objs) assert.deepEqual(validateObject(o), [], name);
    }
  });

  test('the schema check catches wrong types, missing fields and unknown fields at any depth', () => {
    const sts = structuredClone(find(base, 'StatefulSet', 'smartkv-cache'));
    assert.deepEqual(validateObject(sts), []);
    const broken: [string, (o: Obj) => void, RegExp][] = [
      ['a quantity that is not one', (o) => (o.spec.template.spec.containers[0].resources.limits.memory = 'lots'), /limits\/memory/],
      ['no selector', (o) => delete o.spec.selector, /required property '?selector/],
      ['a misspelt probe', (o) => (o.spec.template.spec.containers[0].readinesProbe = o.spec.template.spec.containers[0].readinessProbe), /unknown field spec\.template\.spec\.containers\[0\]\.readinesProbe/],
      ['a misspelt field in a probe', (o) => (o.spec.template.spec.containers[0].livenessProbe.grpc.prot = 1), /unknown field .*livenessProbe\.grpc\.prot/],
      ['a misspelt field in metadata', (o) => (o.metadata.lables = {}), /unknown field metadata\.lables/],
      ['a misspelt volume source', (o) => (o.spec.template.spec.volumes[0].persistentVolumeClam = {}), /unknown field .*volumes\[0\]\.persistentVolumeClam/],
    ];
    for (const [what, breakIt, expected] of broken) {
      const o = structuredClone(sts);
      breakIt(o);
      const errors = validateObject(o);
      assert.ok(errors.some((e) => expected.test(e)), `${what}: ${errors.join('; ')}`);
    }
  });

  test('the renderer follows kustomize: strategic merge, images, labels; it refuses what it does not support', () => {
    const merged = mergePatch(
      { spec: { containers: [{ name: 'a', image: 'x', args: ['1', '2'] }, { name: 'b' }], tolerations: [{ key: 'k' }] } },
      { spec: { containers: [{ name: 'a', args: ['3'] }, { name: 'c' }], tolerations: null } },
      '',
    );
    assert.deepEqual(merged, { spec: { containers: [{ name: 'a', image: 'x', args: ['3'] }, { name: 'b' }, { name: 'c' }] } });

    const dir = mkdtempSync(join(tmpdir(), 'smartkv-kustomize-'));
    try {
      writeFileSync(join(dir, 'kustomization.yaml'), 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [x.yaml]\nnamespace: elsewhere\n');
      writeFileSync(join(dir, 'x.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n');
      assert.throws(() => render(dir), (e: unknown) => e instanceof KustomizeError && /"namespace" is not supported/.test((e as Error).message));
      writeFileSync(join(dir, 'kustomization.yaml'), 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [x.yaml]\npatches: [{path: p.yaml}]\n');
      writeFileSync(join(dir, 'p.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: y}\n');
      assert.throws(() => render(dir), /target v1\/ConfigMap\/y is not among the resources/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }

    assert.equal(container(base, 'cache').image, 'smartkv:0.1.0-cuda');
    assert.equal(container(base, 'orchestrator').image, 'smartkv:0.1.0-cpu');
    assert.equal(container(cpu, 'cache').image, 'smartkv:0.1.0-cpu');
    assert.equal(pod(find(base, 'Deployment', 'smartkv-jaeger'))!.containers[0].image, 'jaegertracing/all-in-one:1.62.0', 'other images untouched');
    for (const o of base) assert.equal((o.metadata.labels as Obj)['app.kubernetes.io/part-of'], 'smartkv', `${o.kind}/${o.metadata.name}`);
  });

  test('GPU base: one GPU per cache pod, --device cuda, the model volume; the CPU overlay takes all of that away', () => {
    const gpuCache = container(base, 'cache');
    assert.equal(String(gpuCache.resources.limits['nvidia.com/gpu']), '1');
    assert.equal(option(effectiveArgs(base, gpuCache), 'device'), 'cuda');
    assert.ok(pod(find(base, 'StatefulSet', 'smartkv-cache'))!.tolerations.some((t: Obj) => t.key === 'nvidia.com/gpu'));
    const [pvc] = readYaml(join(K8S, 'model-pvc.example.yaml')) as Obj[];
    for (const role of ['cache', 'orchestrator'] as const) {
      const spec = pod(find(base, ROLES[role].kind, ROLES[role].name))!;
      assert.equal(spec.volumes.find((v: Obj) => v.name === 'model').persistentVolumeClaim.claimName, pvc.metadata.name);
      const mount = container(base, role).volumeMounts.find((m: Obj) => m.name === 'model');
      assert.ok(option(effectiveArgs(base, container(base, role)), 'model')!.startsWith(mount.mountPath), role);
    }

    const cpuCache = container(cpu, 'cache');
    assert.equal(cpuCache.resources.limits['nvidia.com/gpu'], undefined);
    assert.equal(pod(find(cpu, 'StatefulSet', 'smartkv-cache'))!.tolerations, undefined);
    assert.equal(option(effectiveArgs(cpu, cpuCache), 'device'), 'cpu');
    for (const role of ['cache', 'orchestrator'] as const) {
      const spec = pod(find(cpu, ROLES[role].kind, ROLES[role].name))!;
      assert.deepEqual(spec.volumes.find((v: Obj) => v.name === 'model'), { name: 'model', emptyDir: {} });
      // The image holds the repository at /app (deploy/Dockerfile): the bundled model is there.
      const model = option(effectiveArgs(cpu, container(cpu, role)), 'model')!;
      assert.ok(model.startsWith('/app/') && existsSync(join(ROOT, model.slice('/app/'.length), 'config.json')), model);
    }
    assert.equal(params(cpu)['cluster-domain'], params(base)['cluster-domain'], 'the overlay merges into the params, it does not replace them');
  });

  for (const [name, objs] of [['base', base], ['cpu overlay', cpu]] as const) {
    test(`${name}: every service's args are options it accepts, with every $(VAR) defined`, () => {
      for (const role of Object.keys(ROLES) as (keyof typeof ROLES)[]) {
        const c = container(objs, role);
        assert.deepEqual(c.command, ['node', ROLES[role].main]);
        const ok = accepted(ROLES[role].main);
        assert.ok(ok.has('port') && ok.size > 3, `${role} --help lists its options`);
        for (const a of c.args as string[]) {
          assert.match(a, /^--[a-z-]+(=.*)?$/, `${role}: ${a}`);
          assert.ok(ok.has(a.slice(2).split('=')[0]), `${role}: ${a} is not an option of ${ROLES[role].main}`);
        }
        const defined = new Set(((c.env as Obj[]) ?? []).map((e) => e.name));
        const used = [...c.args, ...((c.env as Obj[]) ?? []).map((e) => e.value ?? '')].join(' ');
        for (const m of used.matchAll(/\$\(([^)]+)\)/g)) assert.ok(defined.has(m[1]), `${role}: $(${m[1]}) is not defined`);
        for (const a of effectiveArgs(objs, c)) assert.ok(!a.includes('undefined'), `${role}: ${a} names a missing ConfigMap key`);
      }
    });

    test(`${name}: gRPC probes on each service's port; grace periods cover the drain; requests and limits; non-root`, () => {
      for (const role of Object.keys(ROLES) as (keyof typeof ROLES)[]) {
        const c = container(objs, role);
        const args = effectiveArgs(objs, c);
        const port = Number(option(args, 'port'));
        assert.ok(c.ports.some((p: Obj) => p.name === 'grpc' && p.containerPort === port), role);
        for (const probe of ['readinessProbe', 'livenessProbe']) assert.equal(c[probe]?.grpc?.port, port, `${role} ${probe}`);
        assert.match(c.readinessProbe.grpc.service, /^smartkv\.v1\.\w+Service$/);
        const graceS = Number(option(args, 'grace-ms')) / 1000;
        const period = pod(find(objs, ROLES[role].kind, ROLES[role].name))!.terminationGracePeriodSeconds;
        assert.ok(graceS > 0 && period >= graceS + 5 && period <= graceS + 15, `${role}: terminationGracePeriodSeconds ${period} vs --grace-ms ${graceS * 1000}`);
        assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, `${role} resources`);
        assert.equal(c.securityContext.readOnlyRootFilesystem, true);
        assert.equal(c.securityContext.allowPrivilegeEscalation, false);
      }
      for (const o of objs) {
        const ps = pod(o);
        if (ps) assert.equal(ps.securityContext?.runAsNonRoot, true, `${o.kind}/${o.metadata.name}`);
      }
      const pdb = find(objs, 'PodDisruptionBudget', 'smartkv-cache');
      const sts = find(objs, 'StatefulSet', 'smartkv-cache');
      assert.deepEqual(pdb.spec.selector.matchLabels, sts.spec.selector.matchLabels);
      assert.equal(pdb.spec.maxUnavailable, 1);
    });

    test(`${name}: the orchestrator finds the shards through the headless Service, the allocator through its Service`, () => {
      const svc = find(objs, 'Service', 'smartkv-cache');
      const sts = find(objs, 'StatefulSet', 'smartkv-cache');
      assert.equal(svc.spec.clusterIP, 'None');
      assert.equal(sts.spec.serviceName, svc.metadata.name);
      assert.deepEqual(svc.spec.selector, sts.spec.selector.matchLabels);
      for (const [k, v] of Object.entries(sts.spec.selector.matchLabels)) assert.equal(sts.spec.template.metadata.labels[k], v);
      const cachePort = Number(option(effectiveArgs(objs, container(objs, 'cache')), 'port'));
      assert.equal(svc.spec.ports[0].port, cachePort);
      const o = effectiveArgs(objs, container(objs, 'orchestrator'));
      assert.equal(option(o, 'cache-dns'), `smartkv-cache.<metadata.namespace>.svc.cluster.local:${cachePort}`);
      assert.equal(option(o, 'cache'), undefined);
      const alloc = find(objs, 'Service', 'smartkv-allocator');
      assert.equal(option(o, 'allocator'), `${alloc.metadata.name}:${alloc.spec.ports[0].port}`);
      assert.equal(alloc.spec.ports[0].port, Number(option(effectiveArgs(objs, container(objs, 'allocator')), 'port')));
      const pub = find(objs, 'Service', 'smartkv');
      assert.equal(pub.spec.ports[0].port, Number(option(o, 'port')));
    });
  }

  test('Prometheus keeps exactly the three services, at their metrics ports; traces go collector → Jaeger', () => {
    const prom = parse(find(base, 'ConfigMap', 'smartkv-prometheus').data['prometheus.yml']);
    const job = prom.scrape_configs[0];
    const relabel = job.relabel_configs as Obj[];
    const kept: string[] = [];
    for (const o of base) {
      const t = (o.spec as Obj | undefined)?.template;
      if (!t) continue;
      // Prometheus's meta labels for this pod, then its relabelling (keep / replace).
      const labels: Record<string, string> = {
        __address__: '10.1.2.3:50052',
        __meta_kubernetes_pod_annotation_prometheus_io_scrape: t.metadata.annotations?.['prometheus.io/scrape'] ?? '',
        __meta_kubernetes_pod_annotation_prometheus_io_port: t.metadata.annotations?.['prometheus.io/port'] ?? '',
        __meta_kubernetes_pod_label_app_kubernetes_io_part_of: t.metadata.labels?.['app.kubernetes.io/part-of'] ?? '',
        __meta_kubernetes_pod_label_app_kubernetes_io_name: t.metadata.labels?.['app.kubernetes.io/name'] ?? '',
        __meta_kubernetes_pod_name: `${o.metadata.name}-0`,
      };
      let keep = true;
      for (const r of relabel) {
        const value = (r.source_labels as string[]).map((l) => labels[l] ?? '').join(r.separator ?? ';');
        const re = new RegExp(`^(?:${r.regex ?? '(.*)'})$`);
        const m = re.exec(value);
        if ((r.action ?? 'replace') === 'keep') keep &&= m !== null;
        else if (m) labels[r.target_label] = (r.replacement ?? '$1').replace(/\$(\d)/g, (_x: string, i: string) => m[Number(i)] ?? '');
      }
      if (!keep) continue;
      kept.push(labels.role);
      const role = (Object.keys(ROLES) as (keyof typeof ROLES)[]).find((r) => ROLES[r].name === o.metadata.name)!;
      const metricsPort = option(effectiveArgs(base, container(base, role)), 'metrics-port');
      assert.equal(labels.__address__, `10.1.2.3:${metricsPort}`, `${role} is scraped at its --metrics-port`);
      assert.ok(container(base, role).ports.some((p: Obj) => p.name === 'metrics' && String(p.containerPort) === metricsPort));
    }
    assert.deepEqual(kept.sort(), ['smartkv-allocator', 'smartkv-cache', 'smartkv-orchestrator']);

    const otel = parse(find(base, 'ConfigMap', 'smartkv-otel-collector').data['config.yaml']);
    const jaeger = find(base, 'Service', 'smartkv-jaeger');
    const grpcPort = jaeger.spec.ports.find((p: Obj) => p.name === 'otlp-grpc').port;
    assert.equal(otel.exporters['otlp/jaeger'].endpoint, `${jaeger.metadata.name}:${grpcPort}`);
    assert.deepEqual(otel.service.pipelines.traces, { receivers: ['otlp'], processors: ['memory_limiter', 'batch'], exporters: ['otlp/jaeger'] });
    const collector = find(base, 'Service', 'smartkv-otel-collector');
    const httpPort = collector.spec.ports.find((p: Obj) => p.name === 'otlp-http').port;
    for (const role of Object.keys(ROLES) as (keyof typeof ROLES)[]) {
      const env = Object.fromEntries((container(base, role).env as Obj[]).map((e) => [e.name, e.value]));
      assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, `http://${collector.metadata.name}:${httpPort}`, role);
      assert.equal(env.OTEL_SERVICE_NAME, `smartkv-${role}`);
    }
  });
});
