// The two precision modes' bytes, against what the engine's buffers hold:
// hot bytes (payload + scales + block positions) match the blocks the
// reported formats fill, layer by layer, for random plans and lengths; a
// reversible sequence's master bytes are the sizes of the master tier's open
// files (memory-mapped, unlinked at once, under masterDir); a downgrade-only
// sequence has no master bytes and no files; freeing a sequence or closing
// the engine closes its files.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { blockBytes, formatBlockTokens } from '../../native/formats.js';
import { KvEngine, type KvEngineConfig } from '../../native/kv-engine.js';
import { gaussian, rng } from '../helpers/random.js';

const dir = mkdtempSync(join(tmpdir(), 'smartkv-master-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Sizes of this process's open files that lived under `dir` ("… (deleted)" once unlinked). */
function tierFiles(): number[] {
  const sizes: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed meanwhile (the directory's own descriptor)
    }
    if (target.startsWith(dir + '/')) sizes.push(statSync(`/proc/self/fd/${fd}`).size);
  }
  return sizes;
}

const CONFIG: KvEngineConfig = { layers: 3, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1, masterDir: dir };
const KV = 2 * 64;

describe('precision modes: bytes reported = bytes held', () => {
  it('for random plans and lengths, in both modes', async () => {
    const eng = new KvEngine(CONFIG);
    const u = rng(7);
    const shape = { headDim: 64, kvHeads: 2, blockTokens: 32, quant: 'symmetric' as const };
    const down = await eng.createSequence({ mode: 'downgrade-only' });
    const up = await eng.createSequence({ mode: 'reversible' });
    let n = 0;
    for (let round = 0; round < 8; round++) {
      const rows = 1 + Math.floor(u() * 300);
      for (let l = 0; l < CONFIG.layers; l++)
        for (const s of [down, up]) await eng.append(s, l, gaussian(rows * KV, round * 10 + l), gaussian(rows * KV, round * 10 + l + 5));
      n += rows;
      for (const s of [down, up]) {
        // Per layer, a random plan: downgrade-only only lowers; reversible goes both ways.
        for (let l = 0; l < CONFIG.layers; l++) {
          const cur = (await eng.exportImportance(s, l)).format;
          const pos = Uint32Array.from({ length: n }, (_, i) => i);
          const fmt = Uint8Array.from(pos, (p) => (s === up ? Math.floor(u() * 4) : Math.max(cur[p], Math.floor(u() * 4))));
          await eng.applyPlan(s, l, pos, fmt);
        }
        const st = await eng.stats(s);
        let blocks = 0, slots = 0;
        for (let l = 0; l < CONFIG.layers; l++) {
          const counts = [0, 0, 0, 0];
          for (const c of (await eng.exportImportance(s, l)).format) counts[c]++;
          counts.forEach((c, code) => {
            const t = formatBlockTokens(code, 32), nb = Math.ceil(c / t); // int4 blocks hold 64 slots, int2 128
            slots += nb * t;
            blocks += nb * blockBytes(code, shape);
          });
        }
        const what = `round ${round}, ${s === up ? 'reversible' : 'downgrade-only'}`;
        // Whole blocks: codes, scales and the slots' positions (4 bytes a slot, counted as metadata).
        assert.equal(st.payloadBytes + st.paramBytes + slots * 4, blocks, `${what}: block bytes`);
        // The rest of the metadata: token map and importance in pages of 128
        // tokens, plus block and page tables (capacities double, never shrink).
        const pages = Math.ceil(n / 128), rest = st.metadataBytes - slots * 4;
        const floor = CONFIG.layers * pages * 128 * 8;
        assert.ok(rest >= floor && rest <= floor + CONFIG.layers * (4 * 2 * Math.ceil(n / 32) + 2 * 2 * pages) * 8, `${what}: bookkeeping ${rest}`);
        assert.equal(st.heldBytes, st.payloadBytes + st.paramBytes + st.metadataBytes);
      }
      const files = tierFiles();
      const [sd, su] = [await eng.stats(down), await eng.stats(up)];
      assert.equal(sd.masterBytes, 0, 'downgrade-only holds no master bytes');
      assert.equal(files.length, CONFIG.layers, 'one master tier file per layer of the reversible sequence');
      assert.equal(su.masterBytes, files.reduce((a, b) => a + b, 0), 'master bytes = the tier files’ sizes');
      assert.ok(su.masterBytes >= n * CONFIG.layers * KV * 2 * 2, 'every token’s FP16 K and V');
      assert.deepEqual(readdirSync(dir), [], 'tier files are unlinked as soon as they are made');
    }
    await eng.freeSequence(up);
    assert.deepEqual(tierFiles(), [], 'freeing the sequence closes its tier files');
    const again = await eng.createSequence({ mode: 'reversible' });
    await eng.append(again, 0, gaussian(10 * KV, 1), gaussian(10 * KV, 2));
    assert.equal(tierFiles().length, CONFIG.layers);
    await eng.close();
    assert.deepEqual(tierFiles(), [], 'closing the engine closes every tier file');
  });

  it('a master tier in a directory that does not exist is an error, not a crash', async () => {
    const eng = new KvEngine({ ...CONFIG, masterDir: join(dir, 'missing', 'deeper') });
    await assert.rejects(eng.createSequence({ mode: 'reversible' }), /master tier: cannot create a file/);
    await eng.createSequence({ mode: 'downgrade-only' }); // needs no tier
    await eng.close();
  });
});

