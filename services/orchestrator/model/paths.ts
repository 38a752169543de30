// Where the bundled reference models live, from the source or the compiled tree.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** models/<name>, found by walking up from this file (src or dist); null if absent. */
function bundledModel(name: string): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const candidate = join(dir, 'models', name);
    if (existsSync(join(candidate, 'config.json'))) return candidate;
    dir = resolve(dir, '..');
  }
  return null;
}

/** The model served by default: the long-context one (models/smartkv-ref-8k,
 * 8,192 positions), else the 1K one. */
export function defaultModelDir(): string {
  return bundledModel('smartkv-ref-8k') ?? shortModelDir();
}

/** models/smartkv-ref: the 1,024-position model, kept as a small fixture. */
export function shortModelDir(): string {
  return bundledModel('smartkv-ref') ?? resolve('models', 'smartkv-ref');
}
