#!/usr/bin/env node
// `npm test`: the kernels' C++ checks (built with the addon by
// `npm run build:native`) and the CUDA device-code check, then node's test
// runner over the compiled TypeScript tests. All always run; the exit code is
// non-zero if any fails.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const checkExe = join(root, 'native', 'build', 'kernels', 'smartkv-kernel-check');
const testDir = join(root, 'dist', 'test');

function run(title, cmd, args) {
  process.stdout.write(`\n== ${title}\n`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) process.stderr.write(`${title}: ${r.error.message}\n`);
  return r.status === 0;
}

function missing(what, hint) {
  process.stderr.write(`${what} is missing; ${hint}\n`);
  return false;
}

const gpuCheckExe = join(root, 'native', 'build', 'kernels', 'cuda', 'smartkv-gpu-check');

const cppOk = existsSync(checkExe)
  ? run('C++ kernel checks', checkExe, [])
  : missing(checkExe, 'run `npm run build:native` (or `npm install`)');
// Built only when nvcc was found; without a GPU it runs its host-side half
// (layout checks and the kernels on a host emulator) and skips the rest.
const gpuOk = existsSync(gpuCheckExe) ? run('CUDA checks (host half without a GPU)', gpuCheckExe, []) : true;
// The device code itself, no GPU needed: the attention kernels compiled to
// PTX and SASS (nvcc -ptx, ptxas -v) must hold 128-bit read-only global loads,
// no local memory or spills, registers within the launch bounds. The host
// emulator above runs the host branch of `#if __CUDA_ARCH__`; this sees the
// other. Skips (and passes) with a message when nvcc is absent.
const ptxOk = run('CUDA device-code check (PTX/SASS)', 'bash', [join(root, 'kernels', 'test', 'ptx-check.sh')]);

// The AVX-512 archive's copies of shared inline code must not be the ones
// linked (a CPU without AVX-512 would fault in generic code).
const build = join(root, 'native', 'build');
const simdOk = run('AVX-512 link check', 'bash', [
  join(root, 'kernels', 'test', 'simd-link-check.sh'),
  build,
  join(build, 'Release', 'smartkv_native.node'),
  checkExe,
  gpuCheckExe,
]);

const tests = existsSync(testDir)
  ? readdirSync(testDir, { recursive: true })
      .filter((f) => f.endsWith('.test.js'))
      .sort()
      .map((f) => join(testDir, f))
  : [];
const jsOk = tests.length
  ? run(`node --test (${tests.length} files)`, process.execPath, ['--test', ...tests])
  : missing('dist/test/**/*.test.js', 'run `npm run build:ts` (or `npm install`)');

const cOk = cppOk && gpuOk && ptxOk && simdOk;
process.stdout.write(`\n== C++ checks: ${cOk ? 'passed' : 'FAILED'}; node tests: ${jsOk ? 'passed' : 'FAILED'}\n`);
process.exit(cOk && jsOk ? 0 : 1);
