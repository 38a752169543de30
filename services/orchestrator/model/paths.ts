// Where the bundled reference model lives, from the source or the compiled tree.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** models/smartkv-ref, found by walking up from this file (src or dist). */
export function defaultModelDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const candidate = join(dir, 'models', 'smartkv-ref');
    if (existsSync(join(candidate, 'config.json'))) return candidate;
    dir = resolve(dir, '..');
  }
  return resolve('models', 'smartkv-ref');
}
