// The CPU kernels' software prefetches must survive compilation. GCC 12
// deleted every call to a helper made only of __builtin_prefetch (its
// mod/ref analysis sees no memory written), so for months the addon held no
// prefetch instruction and "prefetch off" measured the same as "on".
// kernels/src/cpu/prefetch.h uses a volatile asm instead; this reads the
// built addon's machine code and fails if the prefetches are gone again.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const addon = join(root, 'native', 'build', 'Release', 'smartkv_native.node');
const objdump = spawnSync('objdump', ['--version'], { encoding: 'utf8' });

describe('native addon machine code', () => {
  it('holds the kernels\' L2 prefetches (prefetcht1)', { skip: objdump.status !== 0 ? 'objdump not installed' : false }, () => {
    assert.ok(existsSync(addon), `${addon} is missing: run npm run build:native`);
    const r = spawnSync('objdump', ['-d', '--no-show-raw-insn', addon], { encoding: 'utf8', maxBuffer: 1 << 30 });
    assert.equal(r.status, 0, r.stderr);
    const count = (r.stdout.match(/\tprefetcht1\s/g) ?? []).length;
    // one per unrolled line of the run chunks and the per-head fetch: ~170 on x86-64
    assert.ok(count >= 16, `only ${count} prefetcht1 instructions in the addon`);
  });
});
