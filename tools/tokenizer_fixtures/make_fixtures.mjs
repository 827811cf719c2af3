// Writes tests/data/tokenizers/<set>.json: the ids Hugging Face gives for each string of texts.json
// (add_special_tokens=false) and its decode (skip_special_tokens=true), per tokenizer file and variant.
// Reference: HF's Rust `tokenizers` (node binding). @huggingface/transformers is run too; where it disagrees the
// case records `transformers_js_ids` (the Rust ids stay the expected ones).
// Usage (through tools/make_tokenizer_fixtures.sh): node make_fixtures.mjs <repo root> <scratch folder with node_modules>
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [root, scratch] = process.argv.slice(2);
const require = createRequire(path.join(scratch, 'package.json'));
const { Tokenizer } = require('tokenizers');
const transformers = await import(pathToFileURL(require.resolve('@huggingface/transformers')).href);
const versionOf = (p) => JSON.parse(fs.readFileSync(path.join(scratch, 'node_modules', p, 'package.json'))).version;
const rustRef = `tokenizers@${versionOf('tokenizers')} (Hugging Face Rust library, node binding)`;
const jsRef = `@huggingface/transformers@${versionOf('@huggingface/transformers')}`;

const texts = JSON.parse(fs.readFileSync(path.join(root, 'tools/tokenizer_fixtures/texts.json'), 'utf8'));
const metaspace = (scheme, split) => ({ type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split });
const spmDecoder = [{ type: 'ByteFallback' }, { type: 'Fuse' }];
// file: relative to the repo root; variant: top-level fields of tokenizer.json replaced before loading.
const sets = [
  { name: 'gpt2', file: 'data/tokenizers/gpt2/tokenizer.json' },
  { name: 'llama3', file: 'data/tokenizers/llama3/tokenizer.json' },
  { name: 'llama3_1', file: 'data/tokenizers/llama3_1/tokenizer.json' },
  { name: 'qwen3', file: 'data/tokenizers/qwen3/tokenizer.json' },
  { name: 'qwen3-nfd', file: 'data/tokenizers/qwen3/tokenizer.json', variant: { normalizer: { type: 'NFD' } } },
  { name: 'qwen3-nfkc', file: 'data/tokenizers/qwen3/tokenizer.json', variant: { normalizer: { type: 'NFKC' } } },
  { name: 'qwen3-nfkd', file: 'data/tokenizers/qwen3/tokenizer.json', variant: { normalizer: { type: 'NFKD' } } },
  { name: 'gemma3', file: 'data/tokenizers/gemma3/tokenizer.json' },
  { name: 'mistral', file: 'data/tokenizers/mistral/tokenizer.json' },
  // Mistral-v0.3 style: Metaspace pre-tokenizer (prepend_scheme first, no split), no normalizer.
  { name: 'mistral-metaspace-first', file: 'data/tokenizers/mistral/tokenizer.json',
    variant: { normalizer: null, pre_tokenizer: metaspace('first', false),
               decoder: { type: 'Sequence', decoders: [metaspace('first', false), ...spmDecoder] } } },
  { name: 'mistral-metaspace-always-split', file: 'data/tokenizers/mistral/tokenizer.json',
    variant: { normalizer: null, pre_tokenizer: metaspace('always', true),
               decoder: { type: 'Sequence', decoders: [metaspace('always', true), ...spmDecoder] } } },
  { name: 'mistral-metaspace-never-split', file: 'data/tokenizers/mistral/tokenizer.json',
    variant: { normalizer: null, pre_tokenizer: metaspace('never', true),
               decoder: { type: 'Sequence', decoders: [metaspace('never', true), ...spmDecoder] } } },
  { name: 'bert-uncased', file: 'tests/data/tokenizers/bert-uncased/tokenizer.json' },
  { name: 'bert-cased', file: 'tests/data/tokenizers/bert-uncased/tokenizer.json',
    variant: { normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true,
                             strip_accents: null, lowercase: false } } },
  { name: 'bert-lowercase-keep-accents', file: 'tests/data/tokenizers/bert-uncased/tokenizer.json',
    variant: { normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true,
                             strip_accents: false, lowercase: true } } },
  { name: 'bert-strip-accents-no-chinese', file: 'tests/data/tokenizers/bert-uncased/tokenizer.json',
    variant: { normalizer: { type: 'BertNormalizer', clean_text: false, handle_chinese_chars: false,
                             strip_accents: true, lowercase: false } } },
];

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const outDir = path.join(root, 'tests/data/tokenizers');
fs.mkdirSync(outDir, { recursive: true });
for (const set of sets) {
  const json = JSON.parse(fs.readFileSync(path.join(root, set.file), 'utf8'));
  Object.assign(json, set.variant ?? {});
  const text = JSON.stringify(json);
  const rust = Tokenizer.fromString(text);
  let js = null;
  try {
    js = new transformers.PreTrainedTokenizer(json, {});
  } catch (e) {
    console.log(`${set.name}: ${jsRef} cannot load it (${e.message})`);
  }
  const cases = [];
  let agree = 0;
  for (const t of texts) {
    const enc = await rust.encode(t, null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    const c = { text: t, ids, decoded: await rust.decode(ids, true) };
    if (js) {
      const jsIds = Array.from(js.encode(t, { add_special_tokens: false }));
      if (same(ids, jsIds)) ++agree;
      else c.transformers_js_ids = jsIds;
    }
    cases.push(c);
  }
  const out = {
    name: set.name,
    file: set.file,
    variant: set.variant ?? null,
    reference: rustRef,
    cross_check: js ? `${jsRef}: ${agree}/${texts.length} agree` : `${jsRef}: could not load`,
    cases,
  };
  fs.writeFileSync(path.join(outDir, `${set.name}.json`), JSON.stringify(out, null, 1) + '\n');
  console.log(`${set.name}: ${cases.length} cases; ${out.cross_check}`);
}
