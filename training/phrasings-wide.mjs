// Wide training phrasings for the retrieval tasks (plain Node ESM).
//
// Stages 5–8 trained on 2–4 phrasings per task (PHRASINGS.*.train in
// tasks.mjs) and learned them by heart: on the held-out phrasings every
// labelled task scored 0 %. The model has to learn the skill, not the
// sentence, so this file builds hundreds of training phrasings per task from
// parts (noun phrases × sentence frames × question forms), and the key,
// label and variable shapes stay as before.
//
// Held-out phrasings (PHRASINGS.*.heldout in tasks.mjs) must stay unseen: no
// part below uses the words that make a held-out phrasing what it is
// (HELDOUT_MARKERS); test/unit/task-phrasings.test.ts checks that no generated
// template contains one, and that no held-out template is generated.
//
// Most frames answer with a literal repeat of the fact's words up to the key
// (what the held-out labelled and pass-key phrasings do); some answer in other
// words than the fact (what the held-out multi-value and variable-tracking
// phrasings do), so copying is not the only thing learned.

/** Words and phrases that mark the held-out templates; no training template may contain one. */
export const HELDOUT_MARKERS = [
  'magic', 'password', 'memorise', 'today', 'goes with', 'assigned', 'belong',
  'Set ', 'set to', 'holds', 'hold?', 'value of {V}.', 'Here is', 'Now tell',
];

const ADJECTIVES = ['special', 'secret', 'lucky', 'private', 'hidden', 'chosen', 'stored', 'registered', 'personal', 'unique', 'reserved', 'official'];
const NOUNS = ['number', 'code', 'key', 'figure', 'pin', 'tag', 'serial', 'ticket', 'reference', 'combination', 'score', 'id', 'entry', 'label'];
const PLURAL = { entry: 'entries' };
const plural = (n) => PLURAL[n] ?? `${n}s`;
const cap = (s) => s[0].toUpperCase() + s.slice(1);

/** Noun phrases: "special number", "code", … (every noun bare and with every adjective). */
function nounPhrases() {
  const out = [];
  for (const n of NOUNS) {
    out.push({ np: n, nps: plural(n) });
    for (const a of ADJECTIVES) out.push({ np: `${a} ${n}`, nps: `${a} ${plural(n)}` });
  }
  return out;
}

// Labelled facts: frame(np) -> {fact, tail}; `tail` is the fact's words up to
// the key, which the answer repeats. {L} label, {K} key.
const LABELLED_FRAMES = [
  (np) => ({ fact: `The ${np} for {L} is {K}.`, tail: `The ${np} for {L} is ` }),
  (np) => ({ fact: `{L} has the ${np} {K}.`, tail: `{L} has the ${np} ` }),
  (np) => ({ fact: `${cap(np)} of {L}: {K}.`, tail: `${cap(np)} of {L}: ` }),
  (np) => ({ fact: `For {L}, the ${np} is {K}.`, tail: `For {L}, the ${np} is ` }),
  (np) => ({ fact: `The ${np} linked to {L} is {K}.`, tail: `The ${np} linked to {L} is ` }),
  (np) => ({ fact: `{L} was given the ${np} {K}.`, tail: `{L} was given the ${np} ` }),
  (np) => ({ fact: `Write down that the ${np} of {L} is {K}.`, tail: `The ${np} of {L} is ` }),
  (np) => ({ fact: `Keep in mind: {L} -> ${np} {K}.`, tail: `{L} -> ${np} ` }),
];
// Frames without a noun: the relation is the verb.
const LABELLED_VERB_FRAMES = ['maps to', 'points to', 'pairs with', 'matches', 'corresponds to', 'is tied to', 'stands for', 'is linked with']
  .map((v) => ({ fact: `Remember that {L} ${v} {K}.`, tail: `{L} ${v} `, np: 'number' }));
const LABELLED_QUESTIONS = [
  (np) => `What is the ${np} for {L}? `,
  (np) => `Which ${np} does {L} have? `,
  (np) => `Give the ${np} of {L}. `,
  (np) => `Recall the ${np} for {L}. `,
  (np) => `Question: what was the ${np} of {L}? Answer: `,
  () => `Look up {L}. `,
  () => `What number was mentioned with {L}? `,
];
// Answers in other words than the fact (the model must find the key by label).
const OTHER_ANSWERS = [(np) => `The ${np} of {L} is `, (np) => `{L}: `, () => `It is `, (np) => `{L} has ${np} `];

/** Deterministic pseudo-random selection, so the template list is the same in every process. */
function spread(list, every, offset = 0) {
  return list.filter((_, i) => (i + offset) % every === 0);
}

function labelledTemplates() {
  const out = [];
  const nps = nounPhrases();
  nps.forEach(({ np }, i) => {
    LABELLED_FRAMES.forEach((frame, f) => {
      const { fact, tail } = frame(np);
      LABELLED_QUESTIONS.forEach((q, j) => {
        if ((i + f + j) % 3 !== 0) return; // a third of the cross product is plenty
        out.push({ fact, ask: q(np) + tail });
      });
      const other = OTHER_ANSWERS[(i + f) % OTHER_ANSWERS.length](np);
      out.push({ fact, ask: LABELLED_QUESTIONS[(i + 2 * f) % LABELLED_QUESTIONS.length](np) + other });
    });
  });
  for (const v of LABELLED_VERB_FRAMES) {
    for (const q of LABELLED_QUESTIONS) out.push({ fact: v.fact, ask: q(v.np) + v.tail });
    out.push({ fact: v.fact, ask: `What does {L} ${v.tail.slice(4).trim()}? ${v.tail}` });
  }
  return out;
}

function passkeyTemplates() {
  const out = [];
  const framings = [
    (np) => ({ fact: `The ${np} is {K}. Remember it.`, tail: `The ${np} is ` }),
    (np) => ({ fact: `Important: the ${np} is {K}.`, tail: `The ${np} is ` }),
    (np) => ({ fact: `Please note the ${np}: {K}.`, tail: `The ${np} is ` }),
    (np) => ({ fact: `Do not forget the ${np}, which is {K}.`, tail: `The ${np} is ` }),
    (np) => ({ fact: `The ${np} you will need later is {K}.`, tail: `The ${np} you will need later is ` }),
    (np) => ({ fact: `Your ${np} is {K}. {K} is your ${np}.`, tail: `Your ${np} is ` }),
  ];
  const questions = [(np) => `What is the ${np}? `, (np) => `Recall the ${np}. `, (np) => `Which ${np} was given? `, () => `Answer now. `];
  spread(nounPhrases(), 2).forEach(({ np }, i) => {
    framings.forEach((fr, f) => {
      const { fact, tail } = fr(np);
      out.push({ fact, ask: questions[(i + f) % questions.length](np) + tail });
    });
  });
  return out;
}

function multivalueTemplates() {
  const out = [];
  const rels = ['kept by', 'owned by', 'listed under', 'filed under', 'linked to', 'recorded for', 'used by', 'issued to'];
  spread(nounPhrases(), 3).forEach(({ np, nps }, i) => {
    rels.forEach((rel, r) => {
      const form = (i + r) % 3;
      const fact = form === 0 ? `One ${np} ${rel} {L} is {K}.` : form === 1 ? `{L} also has the ${np} {K}.` : `Another ${np} of {L}: {K}.`;
      const ask = form === 0
        ? `Name every ${np} ${rel} {L}. The ${nps} ${rel} {L} are `
        : form === 1 ? `What ${nps} does {L} have? {L} has the ${nps} ` : `List the ${nps} of {L}. The ${nps} of {L} are `;
      out.push({ fact, ask });
    });
  });
  return out;
}

function vartrackTemplates() {
  // Each form is [set, copy]; asks are chosen independently of the forms.
  const forms = [
    ['VAR {L} = {K}.', 'VAR {L} = VAR {V}.'],
    ['Let {L} be {K}.', 'Let {L} be {V}.'],
    ['{L} := {K}.', '{L} := {V}.'],
    ['Put {K} into {L}.', 'Put the contents of {V} into {L}.'],
    ['Make {L} equal {K}.', 'Make {L} equal {V}.'],
    ['{L} starts as {K}.', '{L} starts as a copy of {V}.'],
    ['Store {K} in {L}.', 'Store {V} in {L}.'],
    ['Give {L} the number {K}.', 'Give {L} whatever {V} has.'],
    ['Initialise {L} with {K}.', 'Initialise {L} from {V}.'],
    ['{L} gets {K}.', '{L} gets {V}.'],
  ];
  const asks = [
    'What is the value of VAR {L}? VAR {L} = ',
    'What is {L}? {L} is ',
    'What does {L} contain? {L} contains ',
    'Find {L}. {L} = ',
    'Report {L}. {L} equals ',
    'Print {L}. Output: ',
    'What number is in {L}? The number in {L} is ',
  ];
  const out = [];
  forms.forEach(([set, copy], f) => asks.forEach((ask) => out.push({ set, copy, ask })));
  // Mixed set/copy forms within a chain (the held-out chain has one form, but
  // the skill is following names, not matching one sentence).
  forms.forEach(([set], f) => {
    const [, copy] = forms[(f + 3) % forms.length];
    out.push({ set, copy, ask: asks[f % asks.length] });
  });
  return out;
}

/** Training labels for the wide set: the narrow set's words and more (none in the evaluation list). */
export const WIDE_TRAIN_LABELS = ('apple river stone cloud maple tiger silver garden window candle harbor forest ' +
  'violet copper meadow falcon pepper island marble lantern pebble orchid canyon thunder ' +
  'walnut saddle beacon comet crystal dragon ember fossil glacier hollow ivory jasmine ' +
  'acorn bamboo basket bishop bottle bridge button camel carrot castle cedar cherry cobalt coral ' +
  'cotton cricket daisy desert donkey eagle elbow fern fiddle ginger granite gravel ' +
  'hazel helmet heron honey jacket kitten ladder lizard lobster magnet mango melon mitten ' +
  'napkin nickel oyster paddle panda pencil pickle pigeon pillow planet pocket pony puzzle ' +
  'rabbit radish raven ribbon saffron salmon sandal shovel sparrow spruce stable sugar ' +
  'summit sunset tablet teapot timber tomato trumpet turnip valley walrus willow wizard zebra').split(' ');

export const WIDE_PHRASINGS = {
  passkey: passkeyTemplates(),
  labelled: labelledTemplates(),
  multivalue: multivalueTemplates(),
  vartrack: vartrackTemplates(),
};
