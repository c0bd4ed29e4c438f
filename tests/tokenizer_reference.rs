//! Token ids against independent references (tests/reference/tokenizer_ids.py):
//! - SmolLM2's GGUF tokeniser (gpt2 BPE, pre "smollm"), built by LayerLab from the metadata,
//!   must give exactly the ids of (a) a plain-Python BPE following llama.cpp's pre-tokenizer
//!   for "smollm" and (b) Hugging Face's `tokenizers` (Python) with a tokenizer.json built from
//!   the same metadata by gguf-py; LayerLab's tokenizer.json loader must give the same ids
//!   from that file.
//! - all-MiniLM-L6-v2's tokenizer.json (WordPiece) through LayerLab's loader must give the
//!   ids of Python `tokenizers` with its own post-processor ([CLS] ... [SEP]).
//!
//! Texts: prose, a license excerpt and a whole license, digits and numbers, whitespace runs
//! (spaces, tabs, newlines, trailing), control tokens, non-ASCII letters and emoji, and the
//! empty text. Tolerance: none, ids must be equal.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use layerlab::io::{FileSource, ModelFile};
use layerlab::tokenizer::TextTokenizer;
use serde_json::Value;

const SMOLLM2: &str = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM_TOKENIZER: &str = ".cache/models/all-minilm-l6-v2/tokenizer.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn existing(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_models (scripts/test.sh does)",
        p.display()
    );
    p
}

fn texts() -> Vec<String> {
    let apache = std::fs::read_to_string("/usr/share/common-licenses/Apache-2.0")
        .expect("/usr/share/common-licenses/Apache-2.0 (Debian's base-files) is missing");
    let gpl = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("/usr/share/common-licenses/GPL-3 (Debian's base-files) is missing");
    vec![
        "Hello world! This is LayerLab.".into(),
        apache.chars().take(3000).collect(),
        "In 2024, 1,234,567.89 people paid $3.50 each; call 555-0100 or +44 20 7946 0958. \
         Version 3.14159, 0x1F, 1e-5, ½ and ² and ٣."
            .into(),
        "a  b   c\n\n\n  indented\t\ttabs   \n trailing   ".into(),
        "   leading spaces\r\nwindows line\n\tx = [1, 2,3];  // code-ish {braces}".into(),
        "I'm sure you've seen it; they'll say we'd DON'T 's 'LL".into(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n".into(),
        "Ünïcödé — “quotes”, naïve café, 日本語のテキスト, Ελληνικά, Ђура, emoji 🙂🚀👩‍💻".into(),
        String::new(),
        gpl,
    ]
}

fn reference(texts: &[String], out_json: &PathBuf) -> Value {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh's ensure_python_reference (scripts/test.sh does)",
        python.display()
    );
    let mut child = Command::new(&python)
        .arg(root().join("tests/reference/tokenizer_ids.py"))
        .arg(existing(SMOLLM2))
        .arg(existing(MINILM_TOKENIZER))
        .arg(out_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the Python reference");
    let input = serde_json::to_vec(texts).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/reference/tokenizer_ids.py failed (rerun scripts/setup.sh's \
         ensure_python_reference if a package is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference printed no JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Where two id lists first differ, with the tokens around it decoded.
fn diff(tok: &TextTokenizer, ours: &[u32], theirs: &[u32]) -> String {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let lo = at.saturating_sub(3);
    let show = |v: &[u32]| {
        let w = &v[lo..(at + 4).min(v.len())];
        format!("{w:?} {:?}", tok.decode(w).unwrap_or_default())
    };
    format!(
        "lengths {} vs {}, first difference at {at}: ours {} reference {}",
        ours.len(),
        theirs.len(),
        show(ours),
        show(theirs)
    )
}

#[test]
fn smollm2_gguf_and_minilm_json_token_ids_equal_the_references() {
    let texts = texts();
    let dir = std::env::temp_dir().join(format!("layerlab-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let built_json = dir.join("smollm2-from-gguf.tokenizer.json");
    let reference = reference(&texts, &built_json);

    let src = FileSource::open(&existing(SMOLLM2)).unwrap();
    let file = ModelFile::open(&src).unwrap();
    let gguf = TextTokenizer::from_gguf(&file, "SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    assert_eq!(gguf.vocab_size(), 49152);
    // SmolLM2's metadata says add_bos_token = false: no BOS, as the reference does.
    assert_eq!(reference["add_bos"], Value::Bool(false));
    assert_eq!(gguf.bos(), None);
    let from_json =
        TextTokenizer::from_json(&std::fs::read(&built_json).unwrap(), "built.json").unwrap();
    let minilm = TextTokenizer::from_json(
        &std::fs::read(existing(MINILM_TOKENIZER)).unwrap(),
        "all-minilm tokenizer.json",
    )
    .unwrap();

    for (i, text) in texts.iter().enumerate() {
        let ours = gguf.encode(text).unwrap();
        let plain = ids(&reference["bpe"][i]);
        let hf = ids(&reference["hf_gguf"][i]);
        let head: String = text.chars().take(40).collect();
        assert!(
            ours == plain,
            "text {i} ({head:?}): GGUF tokeniser vs plain-Python BPE: {}",
            diff(&gguf, &ours, &plain)
        );
        assert!(
            ours == hf,
            "text {i} ({head:?}): GGUF tokeniser vs HF tokenizers: {}",
            diff(&gguf, &ours, &hf)
        );
        let ours_json = from_json.encode(text).unwrap();
        assert!(
            ours_json == hf,
            "text {i} ({head:?}): tokenizer.json loader vs HF tokenizers: {}",
            diff(&gguf, &ours_json, &hf)
        );
        assert_eq!(
            minilm.encode(text).unwrap(),
            ids(&reference["minilm"][i]),
            "text {i} ({head:?}): MiniLM tokenizer.json"
        );
        // Byte-level BPE loses nothing: decoding gives the text back.
        assert_eq!(&gguf.decode(&ours).unwrap(), text, "text {i} round trip");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An unknown `tokenizer.ggml.pre` is an error naming it, never a silent fallback.
#[test]
fn unknown_pre_tokenizer_is_an_error_naming_it() {
    let src = FileSource::open(&existing(SMOLLM2)).unwrap();
    let mut file = ModelFile::open(&src).unwrap();
    file.metadata.insert(
        "tokenizer.ggml.pre".into(),
        layerlab::io::MetaValue::Str("made-up-pre".into()),
    );
    let err = TextTokenizer::from_gguf(&file, "x.gguf").err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("x.gguf") && msg.contains("'made-up-pre'"),
        "{msg}"
    );
    file.metadata.insert(
        "tokenizer.ggml.model".into(),
        layerlab::io::MetaValue::Str("llama".into()),
    );
    let msg = TextTokenizer::from_gguf(&file, "x.gguf")
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("'llama'"), "{msg}");
}
