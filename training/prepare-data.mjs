#!/usr/bin/env node
// Data preparation for the SmartKV reference model.
//
//   node training/prepare-data.mjs --out training/out [--passkey-train 40000] [--passkey-eval-per-cell 25]
//
// Writes (UTF-8, documents separated by one blank line):
//   train.txt              training documents
//   heldout.txt            held-out documents (never trained on)
//   split.json             split rule + held-out document names + sizes
//   passkey-train.jsonl    pass-key samples, seeds TRAIN_SEED_BASE + i, filler from train.txt
//   passkey-eval.jsonl     evaluation grid (context bytes x depth), seeds from
//                          EVAL_SEED_BASE (disjoint from training), filler from heldout.txt
//   tasks-train.jsonl      long-context task samples (training/tasks.mjs): training
//                          phrasings, seeds TASK_TRAIN_SEED_BASE + i, filler from the
//                          training documents, 256..--tasks-max-bytes bytes
//   tasks-dense.jsonl     short samples with many facts and questions (writeTaskDense),
//                          training phrasings (stages 6-8)
//   tasks-dense-wide.jsonl the same idea with the wide training phrasings of
//                          phrasings-wide.mjs and multi-turn samples (writeTaskDenseWide, stage 9)
//   tasks-long-wide.jsonl  the same with 4,100..8,180-byte samples, for 8K training sequences
//   tasks-dev.jsonl        the same tasks with held-out phrasings, held-out documents and
//                          DEV seeds (TASK_DEV_SEED_BASE + k), for training/evaluate.py;
//                          the TEST seeds are left for the published evaluation
import fs from 'node:fs';
import path from 'node:path';
import {
  loadDocuments, splitDocuments, HELDOUT_EVERY, makePasskeySamples, makePasskeySample,
  mulberry32, TRAIN_SEED_BASE, EVAL_SEED_BASE, PASSKEY_TEMPLATE,
} from './corpus.mjs';
import { makeTaskSample, TASK_NAMES, TASK_TRAIN_SEED_BASE, TASK_DEV_SEED_BASE } from './tasks.mjs';

function parseArgs(argv) {
  const o = { out: 'training/out', passkeyTrain: 40000, evalPerCell: 25, tasksTrain: 48000, tasksMaxBytes: 8190, tasksDevPerCell: 8, tasksDense: 24000, tasksDenseWide: 32000, tasksLongWide: 6000 };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--out') o.out = argv[++i];
    else if (a === '--passkey-train') o.passkeyTrain = Number(argv[++i]);
    else if (a === '--passkey-eval-per-cell') o.evalPerCell = Number(argv[++i]);
    else if (a === '--tasks-train') o.tasksTrain = Number(argv[++i]);
    else if (a === '--tasks-max-bytes') o.tasksMaxBytes = Number(argv[++i]);
    else if (a === '--tasks-dev-per-cell') o.tasksDevPerCell = Number(argv[++i]);
    else if (a === '--tasks-dense') o.tasksDense = Number(argv[++i]);
    else if (a === '--tasks-dense-wide') o.tasksDenseWide = Number(argv[++i]);
    else if (a === '--tasks-long-wide') o.tasksLongWide = Number(argv[++i]);
    else if (a === '-h' || a === '--help') {
      console.log('usage: node training/prepare-data.mjs --out DIR [--passkey-train N] [--passkey-eval-per-cell N]\n' +
        '       [--tasks-train N] [--tasks-max-bytes B] [--tasks-dev-per-cell N] [--tasks-dense N] [--tasks-dense-wide N] [--tasks-long-wide N]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

export const EVAL_LENGTHS = [256, 512, 768, 1024];
export const EVAL_DEPTHS = [0, 0.25, 0.5, 0.75, 1.0];
/** Context sizes of the dev task grid, in bytes of text (BOS + text + answer fit in 2K/4K/8K tokens). */
export const TASK_DEV_BYTES = [2000, 4040, 8120];

/** Training task samples: sample i uses seed TASK_TRAIN_SEED_BASE + i, task i mod 6, length uniform. */
function writeTaskTrain(file, count, maxBytes, documents) {
  const fd = fs.openSync(file, 'w');
  for (let i = 0; i < count; i++) {
    const seed = TASK_TRAIN_SEED_BASE + i;
    const totalBytes = 256 + Math.floor(mulberry32(seed ^ 0x5bd1e995)() * (maxBytes - 256 + 1));
    const s = makeTaskSample({ task: TASK_NAMES[i % TASK_NAMES.length], seed, totalBytes, phrasing: 'train', documents });
    fs.writeSync(fd, JSON.stringify({ task: s.task, seed, text: s.text, spans: s.answerSpans }) + '\n');
  }
  fs.closeSync(fd);
}

/** Seeds of the dense samples: training range, after the uniform ones. */
export const TASK_DENSE_SEED_OFFSET = 1_000_000;

/**
 * Dense task samples for learning the retrieval skills early: short contexts
 * (60 % 520..1020 bytes, 30 % 1030..2040, 10 % 2050..4090) holding many
 * facts and many questions, so a training step carries ~10x the answer bytes
 * of the uniform samples. Mix: multiquery with 4..8 keys, every key asked
 * (40 %), then passkey, multikey (4 keys), multivalue and vartrack (1..3 hops)
 * at 15 % each. Seeds TASK_TRAIN_SEED_BASE + TASK_DENSE_SEED_OFFSET + i.
 */
function writeTaskDense(file, count, documents) {
  const fd = fs.openSync(file, 'w');
  for (let i = 0; i < count; i++) {
    const seed = TASK_TRAIN_SEED_BASE + TASK_DENSE_SEED_OFFSET + i;
    const r = mulberry32(seed ^ 0x2545f491);
    const band = r();
    const [lo, hi] = band < 0.6 ? [520, 1020] : band < 0.9 ? [1030, 2040] : [2050, 4090];
    const totalBytes = lo + Math.floor(r() * (hi - lo + 1));
    const pickTask = r();
    let o;
    if (pickTask < 0.4) { const keys = 4 + Math.floor(r() * 5); o = { task: 'multiquery', keys, queries: keys }; }
    else if (pickTask < 0.55) o = { task: 'passkey' };
    else if (pickTask < 0.7) o = { task: 'multikey', keys: 4 };
    else if (pickTask < 0.85) o = { task: 'multivalue' };
    else o = { task: 'vartrack', hops: 1 + Math.floor(r() * 3) };
    const s = makeTaskSample({ ...o, seed, totalBytes, phrasing: 'train', documents });
    fs.writeSync(fd, JSON.stringify({ task: s.task, seed, text: s.text, spans: s.answerSpans }) + '\n');
  }
  fs.closeSync(fd);
}

/** Seeds of the wide dense samples: training range, after the dense ones. */
export const TASK_DENSE_WIDE_SEED_OFFSET = 2_000_000;
/** Seeds of the long wide samples (4K..8K bytes): after the wide dense ones. */
export const TASK_LONG_WIDE_SEED_OFFSET = 3_000_000;

/** Length of a wide dense sample: 50 % 520..1020 bytes, 30 % 1030..2040, 20 % 2050..4090. */
function denseWideBytes(r) {
  const band = r();
  const [lo, hi] = band < 0.5 ? [520, 1020] : band < 0.8 ? [1030, 2040] : [2050, 4090];
  return lo + Math.floor(r() * (hi - lo + 1));
}

/**
 * Length of a long wide sample: 4100..8180 bytes, so that an 8K training
 * sequence holds one task whose answer lies 4K..8K positions from its facts
 * (train.py fills a T-token sequence with a sample longer than T/2).
 */
function longWideBytes(r) {
  return 4100 + Math.floor(r() * (8180 - 4100 + 1));
}

/**
 * Dense samples with the wide training phrasings (phrasings-wide.mjs), so the
 * model learns the retrieval skills rather than a few sentences. Lengths: 50 %
 * 520..1020 bytes, 30 % 1030..2040, 20 % 2050..4090. Mix: multiquery with
 * 4..8 keys, every key asked (30 %), passkey 12 %, multikey (4..6 keys) 15 %,
 * multivalue 13 %, vartrack (1..3 hops) 20 %, multiturn (3 questions after
 * filler) 10 %. Seeds TASK_TRAIN_SEED_BASE + seedOffset + i.
 */
function writeTaskDenseWide(file, count, documents, seedOffset = TASK_DENSE_WIDE_SEED_OFFSET, pickBytes = denseWideBytes) {
  const fd = fs.openSync(file, 'w');
  for (let i = 0; i < count; i++) {
    const seed = TASK_TRAIN_SEED_BASE + seedOffset + i;
    const r = mulberry32(seed ^ 0x68e31da4);
    const totalBytes = pickBytes(r);
    const t = r();
    let o;
    if (t < 0.3) { const keys = 4 + Math.floor(r() * 5); o = { task: 'multiquery', keys, queries: keys }; }
    else if (t < 0.42) o = { task: 'passkey' };
    else if (t < 0.57) o = { task: 'multikey', keys: 4 + Math.floor(r() * 3) };
    else if (t < 0.7) o = { task: 'multivalue' };
    else if (t < 0.9) o = { task: 'vartrack', hops: 1 + Math.floor(r() * 3) };
    else o = { task: 'multiturn' };
    const s = makeTaskSample({ ...o, seed, totalBytes, phrasing: 'train-wide', documents });
    fs.writeSync(fd, JSON.stringify({ task: s.task, seed, text: s.text, spans: s.answerSpans }) + '\n');
  }
  fs.closeSync(fd);
}

/** Dev grid: task x context x depth, held-out phrasings and documents, dev seeds. */
function writeTaskDev(file, perCell, documents) {
  const lines = [];
  let k = 0;
  for (const task of TASK_NAMES) {
    for (const totalBytes of TASK_DEV_BYTES) {
      for (const depth of EVAL_DEPTHS) {
        for (let j = 0; j < perCell; j++, k++) {
          const seed = TASK_DEV_SEED_BASE + k;
          const s = makeTaskSample({ task, seed, totalBytes, depth, phrasing: 'heldout', documents });
          lines.push(JSON.stringify({ task, seed, context_bytes: totalBytes, depth, text: s.text, spans: s.answerSpans }));
        }
      }
    }
  }
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return lines.length;
}

function main() {
  const args = parseArgs(process.argv);
  fs.mkdirSync(args.out, { recursive: true });
  const docs = loadDocuments();
  const { train, heldout } = splitDocuments(docs);
  const join = ds => ds.map(d => d.text).join('\n\n') + '\n';
  const trainText = join(train);
  const heldText = join(heldout);
  fs.writeFileSync(path.join(args.out, 'train.txt'), trainText);
  fs.writeFileSync(path.join(args.out, 'heldout.txt'), heldText);
  const split = {
    rule: `Sort all document names (brown/<file>, nlp-corpus/doc-<n>) in string order; the document at sorted index i is held out iff i % ${HELDOUT_EVERY} == ${HELDOUT_EVERY - 1}.`,
    n_documents: docs.length,
    n_train: train.length,
    n_heldout: heldout.length,
    train_bytes: Buffer.byteLength(trainText),
    heldout_bytes: Buffer.byteLength(heldText),
    heldout: heldout.map(d => d.name),
  };
  fs.writeFileSync(path.join(args.out, 'split.json'), JSON.stringify(split, null, 2) + '\n');

  // Training pass-key samples: filler from training text only.
  const pk = makePasskeySamples({ count: args.passkeyTrain, baseSeed: TRAIN_SEED_BASE, fillerText: trainText });
  fs.writeFileSync(
    path.join(args.out, 'passkey-train.jsonl'),
    pk.map(s => JSON.stringify({ text: s.text, passkey: s.passkey })).join('\n') + '\n',
  );

  // Evaluation grid: held-out filler, seeds disjoint from training.
  const evalLines = [];
  let k = 0;
  for (const L of EVAL_LENGTHS) {
    for (const depth of EVAL_DEPTHS) {
      for (let j = 0; j < args.evalPerCell; j++, k++) {
        const seed = EVAL_SEED_BASE + k;
        const s = makePasskeySample({ rng: mulberry32(seed), totalBytes: L, depth, fillerText: heldText });
        evalLines.push(JSON.stringify({ seed, context_bytes: L, depth, passkey: s.passkey, prompt: s.promptText, text: s.text }));
      }
    }
  }
  fs.writeFileSync(path.join(args.out, 'passkey-eval.jsonl'), evalLines.join('\n') + '\n');
  fs.writeFileSync(path.join(args.out, 'passkey-template.json'), JSON.stringify(PASSKEY_TEMPLATE, null, 2) + '\n');
  writeTaskTrain(path.join(args.out, 'tasks-train.jsonl'), args.tasksTrain, args.tasksMaxBytes, train);
  writeTaskDense(path.join(args.out, 'tasks-dense.jsonl'), args.tasksDense, train);
  writeTaskDenseWide(path.join(args.out, 'tasks-dense-wide.jsonl'), args.tasksDenseWide, train);
  writeTaskDenseWide(path.join(args.out, 'tasks-long-wide.jsonl'), args.tasksLongWide, train,
    TASK_LONG_WIDE_SEED_OFFSET, longWideBytes);
  const nDev = writeTaskDev(path.join(args.out, 'tasks-dev.jsonl'), args.tasksDevPerCell, heldout);
  console.log(JSON.stringify({ ...split, heldout: `${heldout.length} names`, passkey_train: pk.length, passkey_eval: evalLines.length,
    tasks_train: args.tasksTrain, tasks_dense: args.tasksDense, tasks_dense_wide: args.tasksDenseWide, tasks_long_wide: args.tasksLongWide, tasks_dev: nDev }));
}

main();
