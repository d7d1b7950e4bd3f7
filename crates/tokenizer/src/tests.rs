//! The synthetic tokenizer round-trips through its files and encodes as the workloads assume.

use super::*;

fn loaded() -> Tokenizer {
    // One directory per call: tests run in parallel and each removes its own.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchyard-tokenizer-{}-{n}", std::process::id()));
    let path = synthetic::write_dir(&dir).unwrap_or_else(|e| panic!("writing the synthetic tokenizer: {e}"));
    let tokenizer = Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let _ = std::fs::remove_dir_all(&dir);
    tokenizer
}

#[test]
fn three_letter_words_are_one_token_each_and_other_text_still_encodes() {
    let tokenizer = loaded();
    let ids = tokenizer.encode("abc def xyz qqq ").unwrap_or_else(|e| panic!("{e}"));
    // "abc", " def", " xyz", " qqq", and the trailing space as a byte.
    assert_eq!(ids.len(), 5, "{ids:?}");
    let words = tokenizer.encode("abc def").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&ids[..2], &words[..]);
    // Anything else falls back to bytes: never an unknown token, and different text gives different ids.
    let odd = tokenizer.encode("Ünïcödé? 123").unwrap_or_else(|e| panic!("{e}"));
    assert!(odd.len() >= "Ünïcödé? 123".chars().count());
    assert_ne!(odd, tokenizer.encode("Ünïcödé! 123").unwrap_or_else(|e| panic!("{e}")));
}

#[test]
fn chat_messages_render_through_the_template_with_special_tokens() {
    let tokenizer = loaded();
    assert!(tokenizer.has_chat_template());
    let messages = [
        ChatMessage {
            role: "system".into(),
            content: "you are terse".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        },
    ];
    let rendered = tokenizer.render_chat(&messages).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rendered,
        "<|im_start|>system\nyou are terse<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tokenizer.encode_chat(&messages).unwrap_or_else(|e| panic!("{e}"));
    let start = tokenizer.encode("<|im_start|>").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(start.len(), 1, "a special token is one id");
    assert_eq!(ids.iter().filter(|&&id| id == start[0]).count(), 3);
    // A longer conversation extends the shorter one's ids: what prefix caching relies on.
    let mut longer = messages.to_vec();
    longer.push(ChatMessage {
        role: "assistant".into(),
        content: "hello".into(),
    });
    let longer_ids = tokenizer.encode_chat(&longer).unwrap_or_else(|e| panic!("{e}"));
    let common = ids.len() - 3; // all but the generation prompt's "<|im_start|>assistant\n"
    assert_eq!(&longer_ids[..common], &ids[..common]);
}

#[test]
fn bad_files_and_templates_are_errors_not_panics() {
    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).err();
    assert!(matches!(err, Some(Error::Read { .. })), "{err:?}");
    let err = Tokenizer::from_parts(b"{\"not\": \"a tokenizer\"}", None, None, None).err();
    assert!(matches!(err, Some(Error::Parse { .. })), "{err:?}");
    let json = synthetic::build().to_string(false).unwrap_or_else(|e| panic!("{e}"));
    let err = Tokenizer::from_parts(json.as_bytes(), Some("{% for %}"), None, None).err();
    assert!(matches!(err, Some(Error::Template(_))), "{err:?}");
    let strict = Tokenizer::from_parts(
        json.as_bytes(),
        Some("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok"),
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let system = [ChatMessage {
        role: "system".into(),
        content: String::new(),
    }];
    let err = strict.render_chat(&system).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("user first")), "{err:?}");
    let plain = Tokenizer::from_parts(json.as_bytes(), None, None, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(plain.encode_chat(&system), Err(Error::NoChatTemplate)));
}

#[test]
fn message_content_is_a_string_or_text_parts() {
    let parts =
        serde_json::json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]);
    assert_eq!(content_text(Some(&parts)), "ab");
    assert_eq!(content_text(Some(&serde_json::json!("x"))), "x");
    assert_eq!(content_text(None), "");
    assert_eq!(content_text(Some(&serde_json::Value::Null)), "");
}

/// Not a timing assertion: prints how long an 8 000-word prompt takes, for `cargo test --release -- --nocapture`.
#[test]
fn a_long_prompt_encodes_to_one_token_per_word() {
    let tokenizer = loaded();
    let prompt: String = (0..8_000usize)
        .map(|i| {
            let w = (i * 7_919) % 17_576;
            let letter = |k: usize| char::from(b'a' + (k % 26) as u8);
            format!("{}{}{} ", letter(w / 676), letter(w / 26), letter(w))
        })
        .collect();
    let started = std::time::Instant::now();
    let ids = tokenizer.encode(prompt.trim_end()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("8 000 words in {:?}", started.elapsed());
    assert_eq!(ids.len(), 8_000);
}

#[test]
fn cached_prefixes_tokenize_exactly_as_the_whole_text() {
    let tokenizer = loaded();
    let reference = synthetic::build();
    let word = |i: usize| {
        let w = (i * 7_919 + 13) % 17_576;
        let letter = |k: usize| char::from(b'a' + (k % 26) as u8);
        format!("{}{}{}", letter(w / 676), letter(w / 26), letter(w))
    };
    let text = |from: usize, words: usize| (from..from + words).map(word).collect::<Vec<_>>().join(" ");
    let prefix = format!(
        "Sys: {}, and \"odd\" things: Ünïcödé  {}",
        text(0, 900),
        text(5_000, 700)
    );
    let prompts = [
        format!("{prefix} {}", text(10_000, 300)),
        format!("{prefix} {}", text(20_000, 5)),
        format!("{prefix}!{}", text(30_000, 400)),
        prefix.clone(),
        format!("{prefix} {}", text(10_000, 300)),
        text(0, 10),
    ];
    for prompt in &prompts {
        let expected = reference
            .encode_fast(prompt.as_str(), true)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = tokenizer.encode(prompt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected.get_ids(), "prompt of {} bytes", prompt.len());
    }
    let cached = tokenizer.cache().len();
    assert!(
        cached >= prefix.len() / prefix_cache::CHUNK_BYTES,
        "{cached} chunks cached"
    );
}
