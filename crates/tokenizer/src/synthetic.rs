//! The project's own small tokenizer: a real byte-level BPE (the GPT-2 family's model) whose merges make every
//! lowercase word of up to three letters one token, with or without its leading space, and a ChatML template.
//!
//! The benchmark workloads write prompts as three-letter words and a space, four characters a token, which is the
//! rate the simulator's latency model was calibrated on; this vocabulary keeps that rate exact while any other
//! text still encodes, byte by byte at worst. It is generated rather than shipped (a few megabytes of JSON), and
//! written by [`write_dir`] where a binary needs a file: the loading code is the same as for a model's own.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use tokenizers::{
    AddedToken, SplitDelimiterBehavior,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::{BPE, Vocab},
    pre_tokenizers::{
        byte_level::ByteLevel,
        sequence::Sequence,
        split::{Split, SplitPattern},
    },
};

/// ChatML, as Qwen and many others write it.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The byte-level alphabet's stand-in for a space.
const SPACE: char = 'Ġ';

/// Builds the tokenizer (about 36 000 tokens, 72 000 merges).
pub fn build() -> tokenizers::Tokenizer {
    let letters: Vec<char> = ('a'..='z').collect();
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    for ch in alphabet {
        let next = vocab.len() as u32;
        vocab.entry(ch.to_string()).or_insert(next);
    }
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut merge = |vocab: &mut HashMap<String, u32>, left: String, right: String| {
        let joined = format!("{left}{right}");
        let next = vocab.len() as u32;
        vocab.entry(joined).or_insert(next);
        merges.push((left, right));
    };
    // Ranks in this order make every word end as one token whichever pair BPE merges first: a space joins its
    // letter first, then letter pairs, then pairs after a space, then both ways of making three letters.
    for &a in &letters {
        merge(&mut vocab, SPACE.to_string(), a.to_string());
    }
    for &a in &letters {
        for &b in &letters {
            merge(&mut vocab, a.to_string(), b.to_string());
        }
    }
    for &a in &letters {
        for &b in &letters {
            merge(&mut vocab, format!("{SPACE}{a}"), b.to_string());
        }
    }
    for &a in &letters {
        for &b in &letters {
            for &c in &letters {
                merge(&mut vocab, format!("{a}{b}"), c.to_string());
                merge(&mut vocab, a.to_string(), format!("{b}{c}"));
                merge(&mut vocab, format!("{SPACE}{a}{b}"), c.to_string());
                merge(&mut vocab, format!("{SPACE}{a}"), format!("{b}{c}"));
            }
        }
    }
    // `ignore_merges`: a word that is itself in the vocabulary is one lookup (as Llama 3's tokenizer does), so
    // encoding stays fast when the workload's 35 000 distinct words overflow the BPE's word cache.
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .ignore_merges(true)
        .build()
        .unwrap_or_else(|e| panic!("the synthetic vocabulary is consistent by construction: {e}"));
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    // Words with their leading space, split by a pattern without look-around (GPT-2's needs a backtracking engine,
    // an order of magnitude slower here), then bytes mapped to the byte-level alphabet.
    let words = Split::new(
        SplitPattern::Regex(r" ?[^\s]+|\s+".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap_or_else(|e| panic!("the word pattern compiles: {e}"));
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        words.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    tokenizer.add_special_tokens(&specials);
    tokenizer
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (with [`CHAT_TEMPLATE`]) into `dir`, creating it, and
/// returns the `tokenizer.json` path. Rewrites only what changed, so concurrent writers of the same content agree.
pub fn write_dir(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let json = build()
        .to_string(false)
        .map_err(|e| io::Error::other(format!("serialising the synthetic tokenizer: {e}")))?;
    let config = serde_json::json!({
        "chat_template": CHAT_TEMPLATE,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let path = dir.join("tokenizer.json");
    write_if_changed(&path, json.as_bytes())?;
    write_if_changed(&dir.join("tokenizer_config.json"), config.to_string().as_bytes())?;
    Ok(path)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
