//! The safetensors and GGUF readers on small files built here byte by byte, with values
//! known in advance: valid files read back exactly (quant blocks checked against ggml's
//! block formulas worked out by hand), and every malformed file gives its specific error,
//! naming the file, without a panic. Also: offsets beyond 4 GiB, and the fuzzer's finds.

use layerlab::io::{ByteSource, DType, Format, MemSource, MetaValue, ModelFile};
use layerlab::LabError;

// ---------- builders ----------

/// A safetensors file from its JSON header text and data section.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A valid safetensors file: tensors laid out one after another.
fn st(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    let header = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}",
        entries.join(",")
    );
    st_raw(&header, &data)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn gstr(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

struct GgufTensor {
    name: &'static str,
    /// Innermost first, as in the file.
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn gt(name: &'static str, dims: &[u64], ty: u32, data: Vec<u8>) -> GgufTensor {
    GgufTensor {
        name,
        dims: dims.to_vec(),
        ty,
        data,
    }
}

/// A GGUF file: header, key/values (key, type id, encoded value), tensor infos, padding,
/// data with each tensor aligned. `n_dims_override` and `offset_override` forge fields.
fn gguf_with(
    version: u32,
    kvs: &[(&str, u32, Vec<u8>)],
    tensors: &[GgufTensor],
    alignment: usize,
    forge: impl Fn(usize, &mut u32, &mut u64),
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        out.extend(gstr(k));
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(v);
    }
    let mut data = Vec::new();
    let mut offsets = Vec::new();
    for t in tensors {
        while data.len() % alignment != 0 {
            data.push(0);
        }
        offsets.push(data.len() as u64);
        data.extend_from_slice(&t.data);
    }
    for (i, t) in tensors.iter().enumerate() {
        let mut n_dims = t.dims.len() as u32;
        let mut offset = offsets[i];
        forge(i, &mut n_dims, &mut offset);
        out.extend(gstr(t.name));
        out.extend_from_slice(&n_dims.to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(alignment) {
        out.push(0);
    }
    out.extend(data);
    out
}

fn gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[GgufTensor]) -> Vec<u8> {
    gguf_with(3, kvs, tensors, 32, |_, _, _| {})
}

fn u32v(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn open(name: &str, bytes: Vec<u8>) -> (MemSource, ModelFile) {
    let src = MemSource::new(name, bytes);
    let file = ModelFile::open(&src).unwrap_or_else(|e| panic!("{name} should open: {e}"));
    (src, file)
}

/// The BadFile message for opening these bytes; also checks it names the file.
fn open_err(name: &str, bytes: Vec<u8>) -> String {
    let src = MemSource::new(name, bytes);
    match ModelFile::open(&src) {
        Err(LabError::BadFile(m)) => {
            assert!(
                m.starts_with(&format!("{name}: ")),
                "does not name the file: {m}"
            );
            m
        }
        Err(e) => panic!("{name}: expected a BadFile error, got {e:?}"),
        Ok(f) => panic!("{name}: expected an error, opened {:?}", f.tensors),
    }
}

fn assert_has(msg: &str, want: &str) {
    assert!(msg.contains(want), "message {msg:?} lacks {want:?}");
}

// ---------- safetensors ----------

#[test]
fn safetensors_reads_every_float_type_exactly() {
    let f16: Vec<u8> = [0.5f32, -1.0, 2.0, 65504.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    // bf16 is the high half of an f32: 1.0 = 0x3f80, -3.0 = 0xc040.
    let bf16 = vec![0x80, 0x3f, 0x40, 0xc0];
    let bytes = st(&[
        (
            "a.weight",
            "F32",
            &[2, 3],
            f32s(&[1.0, -2.0, 3.0, -4.0, 5.0, -6.5]),
        ),
        ("b.weight", "F16", &[4], f16),
        ("c.weight", "BF16", &[2], bf16),
        (
            "ids",
            "I64",
            &[2],
            [7i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        ("empty", "F32", &[0, 4], vec![]),
    ]);
    let (src, file) = open("tiny.safetensors", bytes);
    assert_eq!(file.format, Format::Safetensors);
    assert_eq!(
        file.metadata.get("format"),
        Some(&MetaValue::Str("pt".into()))
    );
    let names: Vec<_> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "b.weight", "c.weight", "ids", "empty"]);
    let a = file.tensor("a.weight").unwrap();
    assert_eq!(
        (a.shape.clone(), a.dtype.clone(), a.nbytes),
        (vec![2, 3], DType::F32, 24)
    );
    assert_eq!(
        file.read_f32(&src, a).unwrap(),
        [1.0, -2.0, 3.0, -4.0, 5.0, -6.5]
    );
    let b = file.tensor("b.weight").unwrap();
    assert_eq!(file.read_f32(&src, b).unwrap(), [0.5, -1.0, 2.0, 65504.0]);
    let c = file.tensor("c.weight").unwrap();
    assert_eq!(file.read_f32(&src, c).unwrap(), [1.0, -3.0]);
    let e = file.tensor("empty").unwrap();
    assert!(file.read_f32(&src, e).unwrap().is_empty());

    // Integer tensors are listed, not analysed.
    let ids = file.tensor("ids").unwrap();
    assert_eq!(ids.dtype, DType::I64);
    assert!(!ids.dtype.analysable());
    match file.read_f32(&src, ids) {
        Err(LabError::BadFile(m)) => assert_eq!(
            m,
            "tiny.safetensors: tensor ids has type I64, which LayerLab cannot read yet"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn empty_and_foreign_files_are_named_as_such() {
    assert_eq!(open_err("e.bin", vec![]), "e.bin: the file is empty");
    let text = b"Apache License\nVersion 2.0, January 2004\n".to_vec();
    assert_eq!(
        open_err("LICENSE", text),
        "LICENSE: not a model file: neither GGUF (magic 'GGUF') nor safetensors \
         (8-byte header length + JSON)"
    );
    // A real text file every Debian machine has.
    if let Ok(bytes) = std::fs::read("/usr/share/common-licenses/GPL-3") {
        assert_has(&open_err("GPL-3", bytes), "not a model file");
    }
    assert_has(&open_err("short", b"{}".to_vec()), "not a model file");
}

#[test]
fn safetensors_header_errors() {
    // Truncated: the header length promises more than the file has.
    let mut bytes = st(&[("a", "F32", &[1], f32s(&[1.0]))]);
    bytes.truncate(20);
    assert_has(
        &open_err("t.safetensors", bytes),
        "safetensors header length 85 bytes runs past the end of the file (20 bytes)",
    );
    // Absurd header length.
    let mut bytes = (1u64 << 50).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":1}");
    assert_has(
        &open_err("h.safetensors", bytes),
        "header length 1125899906842624 bytes runs past the end of the file (15 bytes)",
    );
    // Not JSON, and JSON but not an object.
    assert_has(
        &open_err("j.safetensors", st_raw("{\"a\": [1,", b"")),
        "safetensors header is not valid JSON",
    );
    assert_has(
        &open_err("k.safetensors", {
            let mut b = st_raw("{}", b"");
            b[8] = b'{';
            b.truncate(9);
            b
        }),
        "safetensors header length 2 bytes runs past the end of the file (9 bytes)",
    );
    assert_has(
        &open_err(
            "m.safetensors",
            st_raw("{\"__metadata__\": {\"x\": 3}}", b""),
        ),
        "__metadata__ value x is not a string",
    );
}

#[test]
fn safetensors_tensor_errors() {
    let cases: &[(&str, &[u8], &str)] = &[
        // Truncated data / offsets past the end.
        (
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0u8; 12],
            "tensor w: data at 0..16 runs past the end of the data section (12 bytes)",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[1000,1004]}}"#,
            &[0u8; 8],
            "tensor w: data at 1000..1004 runs past the end of the data section (8 bytes)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
            &[0u8; 24],
            "tensors a and b overlap: data 0..16 and 8..24",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
            &[0u8; 8],
            "tensor w: data_offsets [8, 4] begin after they end",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
            &[0u8; 24],
            "tensor w: shape [2, 3] of F32 needs 24 bytes, data_offsets give 20",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#,
            &[0u8; 4],
            "tensor w: shape [1099511627776, 1099511627776] has too many elements (overflow)",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}"#,
            &[0u8; 4],
            "tensor w: shape [4611686018427387904] has too many elements (overflow)",
        ),
        (
            r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
            &[0u8; 4],
            "tensor w: unknown dtype \"Q9\"",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0u8; 4],
            "tensor w: shape entry -1 is not a non-negative integer",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[1]}}"#,
            &[0u8; 4],
            "tensor w: the header has no data_offsets",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,
            &[0u8; 4],
            "tensor w: data_offsets is not [begin, end]",
        ),
        (r#"{"w":7}"#, &[], "tensor w: expected an object, found 7"),
    ];
    for (header, data, want) in cases {
        let msg = open_err("bad.safetensors", st_raw(header, data));
        assert_has(&msg, want);
    }
}

// ---------- GGUF ----------

/// Every metadata value type, with nested arrays.
fn all_kinds_kvs() -> Vec<(&'static str, u32, Vec<u8>)> {
    let mut nested = u32v(9); // array of arrays of i32
    nested.extend_from_slice(&2u64.to_le_bytes());
    for row in [[1i32, -2], [3, 4]] {
        nested.extend(u32v(5));
        nested.extend_from_slice(&2u64.to_le_bytes());
        for x in row {
            nested.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut tokens = u32v(8);
    tokens.extend_from_slice(&3u64.to_le_bytes());
    for t in ["<s>", "a", "é"] {
        tokens.extend(gstr(t));
    }
    vec![
        ("general.architecture", 8, gstr("llama")),
        ("u8", 0, vec![200]),
        ("i8", 1, vec![0xff]),
        ("u16", 2, 60000u16.to_le_bytes().to_vec()),
        ("i16", 3, (-300i16).to_le_bytes().to_vec()),
        ("u32", 4, u32v(4_000_000_000)),
        ("i32", 5, (-5i32).to_le_bytes().to_vec()),
        ("f32", 6, 1.5f32.to_le_bytes().to_vec()),
        ("bool", 7, vec![1]),
        ("u64", 10, u64::MAX.to_le_bytes().to_vec()),
        ("i64", 11, i64::MIN.to_le_bytes().to_vec()),
        ("f64", 12, (-0.25f64).to_le_bytes().to_vec()),
        ("nested", 9, nested),
        ("tokenizer.ggml.tokens", 9, tokens),
    ]
}

/// One Q8_0 block: d = 0.5 (f16 0x3800), q = -16..16. Value i = d * q_i.
fn q8_0_block() -> (Vec<u8>, Vec<f32>) {
    let mut b = vec![0x00, 0x38];
    let q: Vec<i8> = (-16..16).collect();
    b.extend(q.iter().map(|&x| x as u8));
    (b, q.iter().map(|&x| 0.5 * x as f32).collect())
}

/// One Q4_0 block: d = 0.25 (f16 0x3400), 16 bytes of nibbles. ggml puts the low nibbles
/// of bytes 0..16 at positions 0..16 and the high nibbles at 16..32; value = d * (n - 8).
fn q4_0_block() -> (Vec<u8>, Vec<f32>) {
    let qs: Vec<u8> = (0..16u8).map(|j| (15 - j) << 4 | j).collect();
    let mut b = vec![0x00, 0x34];
    b.extend(&qs);
    let lo = qs.iter().map(|q| 0.25 * ((q & 15) as f32 - 8.0));
    let hi = qs.iter().map(|q| 0.25 * ((q >> 4) as f32 - 8.0));
    (b, lo.chain(hi).collect())
}

/// One Q4_1 block: d = 2.0 (0x4000), m = -1.0 (0xbc00); value = d * n + m.
fn q4_1_block() -> (Vec<u8>, Vec<f32>) {
    let qs: Vec<u8> = (0..16u8).map(|j| (j / 2) << 4 | (15 - j)).collect();
    let mut b = vec![0x00, 0x40, 0x00, 0xbc];
    b.extend(&qs);
    let lo = qs.iter().map(|q| 2.0 * (q & 15) as f32 - 1.0);
    let hi = qs.iter().map(|q| 2.0 * (q >> 4) as f32 - 1.0);
    (b, lo.chain(hi).collect())
}

#[test]
fn gguf_reads_metadata_shapes_and_values() {
    let (q8, q8_want) = q8_0_block();
    let (q40, q40_want) = q4_0_block();
    let (q41, q41_want) = q4_1_block();
    // Two rows of Q8_0: the second block scaled differently (d = 1.0 = 0x3c00).
    let mut q8x2 = q8.clone();
    q8x2.extend([0x00, 0x3c]);
    q8x2.extend(q8.iter().skip(2));
    let q8x2_want: Vec<f32> = q8_want
        .iter()
        .copied()
        .chain(q8_want.iter().map(|x| x * 2.0))
        .collect();
    let f16: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0, 4.0, -0.125]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let tensors = [
        gt(
            "blk.0.attn_norm.weight",
            &[4],
            0,
            f32s(&[1.0, 2.0, 3.0, 4.0]),
        ),
        gt("blk.0.attn_q.weight", &[3, 2], 1, f16),
        gt(
            "token_embd.weight",
            &[2, 1],
            30,
            vec![0x80, 0x3f, 0x40, 0xc0],
        ),
        gt("q8", &[32, 2], 8, q8x2),
        gt("q40", &[32], 2, q40),
        gt("q41", &[32], 3, q41),
        gt("q2k", &[256], 10, vec![0; 84]),
        gt("odd", &[3], 42, vec![0; 12]),
    ];
    let (src, file) = open("m.gguf", gguf(&all_kinds_kvs(), &tensors));
    assert_eq!(file.format, Format::Gguf);

    let m = &file.metadata;
    assert_eq!(m["general.architecture"], MetaValue::Str("llama".into()));
    assert_eq!(m["u8"], MetaValue::UInt(200));
    assert_eq!(m["i8"], MetaValue::Int(-1));
    assert_eq!(m["u16"], MetaValue::UInt(60000));
    assert_eq!(m["i16"], MetaValue::Int(-300));
    assert_eq!(m["u32"], MetaValue::UInt(4_000_000_000));
    assert_eq!(m["i32"], MetaValue::Int(-5));
    assert_eq!(m["f32"], MetaValue::Float(1.5));
    assert_eq!(m["bool"], MetaValue::Bool(true));
    assert_eq!(m["u64"], MetaValue::UInt(u64::MAX));
    assert_eq!(m["i64"], MetaValue::Int(i64::MIN));
    assert_eq!(m["f64"], MetaValue::Float(-0.25));
    use MetaValue::{Array, Int, Str};
    assert_eq!(
        m["nested"],
        Array(vec![
            Array(vec![Int(1), Int(-2)]),
            Array(vec![Int(3), Int(4)])
        ])
    );
    assert_eq!(
        m["tokenizer.ggml.tokens"],
        Array(vec![Str("<s>".into()), Str("a".into()), Str("é".into())])
    );

    // Shapes are reversed to row-major, outermost first.
    let shape = |n: &str| file.tensor(n).unwrap().shape.clone();
    assert_eq!(shape("blk.0.attn_q.weight"), [2, 3]);
    assert_eq!(shape("token_embd.weight"), [1, 2]);
    assert_eq!(shape("q8"), [2, 32]);
    // Offsets are absolute and aligned to 32.
    for t in &file.tensors {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
    }

    let read = |n: &str| file.read_f32(&src, file.tensor(n).unwrap()).unwrap();
    assert_eq!(read("blk.0.attn_norm.weight"), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        read("blk.0.attn_q.weight"),
        [1.0, -2.0, 0.5, 3.0, 4.0, -0.125]
    );
    assert_eq!(read("token_embd.weight"), [1.0, -3.0]);
    assert_eq!(read("q8"), q8x2_want);
    assert_eq!(read("q40"), q40_want);
    assert_eq!(read("q41"), q41_want);

    let q2k = file.tensor("q2k").unwrap();
    assert_eq!((q2k.dtype.clone(), q2k.nbytes), (DType::Q2K, 84));
    match file.read_f32(&src, q2k) {
        Err(LabError::BadFile(m)) => {
            assert_eq!(
                m,
                "m.gguf: tensor q2k has type Q2K, which LayerLab cannot read yet"
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // An unknown ggml type is listed, not analysed.
    let odd = file.tensor("odd").unwrap();
    assert_eq!(odd.dtype, DType::Other("type 42".into()));
    assert!(!odd.dtype.analysable());
    assert!(file.read_f32(&src, odd).is_err());
}

#[test]
fn gguf_version_2_and_custom_alignment() {
    let t = [
        gt("w", &[2], 0, f32s(&[7.0, -7.0])),
        gt("v", &[1], 0, f32s(&[3.0])),
    ];
    let kvs = [("general.alignment", 4, u32v(64))];
    let bytes = gguf_with(2, &kvs, &t, 64, |_, _, _| {});
    let (src, file) = open("v2.gguf", bytes);
    for t in &file.tensors {
        assert_eq!(t.offset % 64, 0);
    }
    assert_eq!(
        file.read_f32(&src, file.tensor("v").unwrap()).unwrap(),
        [3.0]
    );
}

#[test]
fn gguf_errors() {
    let t = || vec![gt("w", &[4], 0, f32s(&[1.0, 2.0, 3.0, 4.0]))];
    let good = gguf(&[], &t());

    // Magic: the sniffer does not take it for GGUF; the GGUF reader itself names the magic.
    let mut bad_magic = good.clone();
    bad_magic[3] = b'X';
    assert_has(&open_err("x.gguf", bad_magic.clone()), "not a model file");
    match layerlab::io::gguf::open(&MemSource::new("x.gguf", bad_magic)) {
        Err(LabError::BadFile(m)) => assert_has(&m, "x.gguf: not a GGUF file: magic is"),
        other => panic!("expected an error, got {other:?}"),
    }

    assert_eq!(
        open_err("v1.gguf", gguf_with(1, &[], &t(), 32, |_, _, _| {})),
        "v1.gguf: GGUF version 1 is not supported (expected version 2 or 3; re-convert the \
         model with a recent llama.cpp)"
    );
    assert_has(
        &open_err("v9.gguf", gguf_with(9, &[], &t(), 32, |_, _, _| {})),
        "unsupported GGUF version 9 (expected version 2 or 3)",
    );
    assert_has(
        &open_err(
            "be.gguf",
            gguf_with(3u32.swap_bytes(), &[], &t(), 32, |_, _, _| {}),
        ),
        "big-endian GGUF is not supported",
    );

    // Truncated header.
    let mut short = good.clone();
    short.truncate(40);
    assert_has(
        &open_err("s.gguf", short),
        "truncated GGUF header: tensor w: dims at byte 37 needs 8 bytes, the file has 40",
    );
    assert_has(
        &open_err("s4.gguf", b"GGUF\x03\x00".to_vec()),
        "truncated GGUF header: version at byte 4 needs 4 bytes, the file has 6",
    );

    // A string length far past the end (the key of the first key/value).
    let mut huge = b"GGUF".to_vec();
    huge.extend(u32v(3));
    huge.extend(0u64.to_le_bytes());
    huge.extend(1u64.to_le_bytes());
    huge.extend((u64::MAX - 3).to_le_bytes());
    huge.extend([b'a'; 19]);
    assert_has(
        &open_err("str.gguf", huge),
        "metadata key: string length 18446744073709551612 at byte 24 runs past the end of the file (51 bytes)",
    );

    // An array count far past the end.
    let mut arr = u32v(4);
    arr.extend((1u64 << 60).to_le_bytes());
    assert_has(
        &open_err("arr.gguf", gguf(&[("a", 9, arr)], &t())),
        "metadata a: array count at byte",
    );
    // Counts in the file header.
    let mut many = good.clone();
    many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_has(
        &open_err("n.gguf", many),
        "tensor count at byte 8 is 18446744073709551615",
    );

    // Alignment: not a power of two, zero.
    for a in [0u32, 3, 48] {
        assert_has(
            &open_err("al.gguf", gguf(&[("general.alignment", 4, u32v(a))], &t())),
            "general.alignment is UInt(",
        );
    }

    // n_dims 9.
    assert_has(
        &open_err("d.gguf", gguf_with(3, &[], &t(), 32, |_, n, _| *n = 9)),
        "tensor w: n_dims is 9, at most 4 expected",
    );
    // Dims whose product overflows.
    let big = [gt("w", &[1 << 40, 1 << 40], 0, vec![])];
    assert_has(
        &open_err("o.gguf", gguf(&[], &big)),
        "tensor w: dims [1099511627776, 1099511627776] have too many elements (overflow)",
    );
    // Offset past the end, and an unaligned offset.
    assert_has(
        &open_err(
            "p.gguf",
            gguf_with(3, &[], &t(), 32, |_, _, o| *o = 1 << 20),
        ),
        "tensor w: data at 1048640..1048656 runs past the end of the file (80 bytes)",
    );
    assert_has(
        &open_err("u.gguf", gguf_with(3, &[], &t(), 32, |_, _, o| *o = 4)),
        "tensor w: offset 4 is not a multiple of the alignment 32",
    );
    // Truncated data.
    let mut cut = good.clone();
    cut.truncate(good.len() - 4);
    assert_has(
        &open_err("c.gguf", cut),
        "tensor w: data at 64..80 runs past the end of the file (76 bytes)",
    );
    // Quant rows must be whole blocks.
    let q = [gt("q", &[16, 2], 8, vec![0; 34])];
    assert_has(
        &open_err("q.gguf", gguf(&[], &q)),
        "tensor q: row length 16 is not a multiple of the Q8_0 block size 32",
    );
    // Unknown metadata value type, bad bool, duplicate names.
    assert_has(
        &open_err("k.gguf", gguf(&[("a", 13, vec![0; 8])], &t())),
        "metadata a: unknown value type 13",
    );
    assert_has(
        &open_err("b.gguf", gguf(&[("a", 7, vec![2])], &t())),
        "metadata a: bool value 2 is not 0 or 1",
    );
    let twice = [
        gt("w", &[1], 0, f32s(&[1.0])),
        gt("w", &[1], 0, f32s(&[1.0])),
    ];
    assert_has(
        &open_err("tw.gguf", gguf(&[], &twice)),
        "tensor w appears twice",
    );
}

// ---------- beyond 4 GiB ----------

/// A sparse file: `len` bytes, zeros except for the given pieces (the header at 0 and one
/// tensor far out), so a 5 GiB model costs nothing to build.
struct Sparse {
    len: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl ByteSource for Sparse {
    fn name(&self) -> String {
        "big.gguf".into()
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> layerlab::Result<()> {
        layerlab::io::check_range(&self.name(), self.len, offset, buf.len() as u64)?;
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (at, bytes) in &self.pieces {
            let (lo, hi) = (offset.max(*at), end.min(at + bytes.len() as u64));
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(())
    }
}

#[test]
fn offsets_beyond_4_gib() {
    let far: u64 = 5 << 30;
    // GGUF: the tensor sits at data start + 5 GiB.
    let header = gguf_with(3, &[], &[gt("w", &[2], 0, vec![])], 32, |_, _, o| *o = far);
    let data_start = header.len() as u64;
    let src = Sparse {
        len: data_start + far + 8,
        pieces: vec![(0, header), (data_start + far, f32s(&[1.5, -2.5]))],
    };
    let file = ModelFile::open(&src).unwrap();
    let w = file.tensor("w").unwrap();
    assert_eq!(w.offset, data_start + far);
    assert_eq!(file.read_f32(&src, w).unwrap(), [1.5, -2.5]);

    // safetensors: a 5 GiB tensor first, then a small one after it.
    let header = format!(
        r#"{{"big":{{"dtype":"U8","shape":[{far}],"data_offsets":[0,{far}]}},"w":{{"dtype":"F32","shape":[2],"data_offsets":[{far},{}]}}}}"#,
        far + 8
    );
    let bytes = st_raw(&header, &[]);
    let data_start = bytes.len() as u64;
    let src = Sparse {
        len: data_start + far + 8,
        pieces: vec![(0, bytes), (data_start + far, f32s(&[0.25, 4.0]))],
    };
    let file = ModelFile::open(&src).unwrap();
    let w = file.tensor("w").unwrap();
    assert_eq!(w.offset, data_start + far);
    assert_eq!(file.read_f32(&src, w).unwrap(), [0.25, 4.0]);
}

#[test]
fn gguf_metadata_array_items_are_bounded() {
    // 2^23 + 1 one-byte items would become 2^23 + 1 values of 32 bytes each: refused before
    // allocating. The items themselves are the sparse file's zeros.
    let mut arr = u32v(0);
    arr.extend(((1u64 << 23) + 1).to_le_bytes());
    let header = gguf_with(3, &[("a", 9, arr)], &[], 32, |_, _, _| {});
    let src = Sparse {
        len: header.len() as u64 + (1 << 24),
        pieces: vec![(0, header)],
    };
    match ModelFile::open(&src) {
        Err(LabError::BadFile(m)) => assert_eq!(
            m,
            "big.gguf: metadata a: the metadata arrays hold more than 8388608 values in all, \
             over the limit"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

// ---------- found by the fuzzer (fuzz/): each input once crashed or misbehaved ----------
