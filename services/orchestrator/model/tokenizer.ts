// Tokenisers: byte-level for the bundled reference model (ids 0..255 are the
// UTF-8 bytes, then BOS and EOS), and tokenizer.json (BPE, SentencePiece-style
// byte fallback, ...) for real checkpoints through @huggingface/tokenizers,
// offline: it reads the JSON files in the model folder and nothing else.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { ModelLoadError } from './model-error.js';

export interface TextTokenizer {
  readonly bosId: number | null;
  readonly eosIds: number[];
  /** Token ids of the text, with BOS in front when the tokenizer uses one. */
  encode(text: string): number[];
  decode(ids: number[]): string;
}

export class ByteTokenizer implements TextTokenizer {
  readonly eosIds: number[];
  constructor(
    readonly bosId: number,
    eosId: number,
  ) {
    this.eosIds = [eosId];
  }
  encode(text: string): number[] {
    return [this.bosId, ...Buffer.from(text, 'utf8')];
  }
  decode(ids: number[]): string {
    return Buffer.from(ids.filter((i) => i < 256)).toString('utf8');
  }
}

class JsonTokenizer implements TextTokenizer {
  constructor(
    private readonly tok: HfTokenizer,
    readonly bosId: number | null,
    readonly eosIds: number[],
  ) {}
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: true }).ids;
  }
  decode(ids: number[]): string {
    return this.tok.decode(ids, { skip_special_tokens: true });
  }
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ModelLoadError(file, `cannot read JSON: ${(e as Error).message}`);
  }
}

export function loadTokenizer(folder: string, bosId: number | null, eosIds: number[]): TextTokenizer {
  const configFile = join(folder, 'tokenizer_config.json');
  const config = existsSync(configFile) ? readJson(configFile) : {};
  if (config.byte_level === true) {
    if (bosId === null || eosIds.length === 0) throw new ModelLoadError(configFile, 'a byte-level tokenizer needs bos and eos ids');
    return new ByteTokenizer(bosId, eosIds[0]);
  }
  const tokFile = join(folder, 'tokenizer.json');
  if (!existsSync(tokFile)) throw new ModelLoadError(folder, 'no tokenizer.json and no byte-level tokenizer_config.json');
  try {
    return new JsonTokenizer(new HfTokenizer(readJson(tokFile), config), bosId, eosIds);
  } catch (e) {
    if (e instanceof ModelLoadError) throw e;
    throw new ModelLoadError(tokFile, `unusable tokenizer: ${(e as Error).message}`);
  }
}
