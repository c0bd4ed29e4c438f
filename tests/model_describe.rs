//! `model::describe` on the tensor lists of the architectures the test models do not cover:
//! Hugging Face LLaMA with an untied head, Qwen2 (q/k/v biases), GPT-2 (Conv1D, with and
//! without the `transformer.` prefix), OPT, and an unknown architecture. The expected
//! structure is written out by hand from each family's published naming.

use std::collections::BTreeMap;

use layerlab::io::{DType, Format, MetaValue, ModelFile, TensorInfo};
use layerlab::model::{describe, Arch};
use serde_json::json;

fn file(names: &[String]) -> ModelFile {
    ModelFile {
        format: Format::Safetensors,
        tensors: names
            .iter()
            .map(|n| TensorInfo {
                name: n.clone(),
                shape: vec![4, 4],
                dtype: DType::F32,
                offset: 0,
                nbytes: 64,
            })
            .collect(),
        metadata: BTreeMap::new(),
    }
}

fn per_block(layers: usize, parts: &[&str], prefix: &str) -> Vec<String> {
    (0..layers)
        .flat_map(|i| parts.iter().map(move |p| format!("{prefix}{i}.{p}")))
        .collect()
}

#[test]
fn hf_llama_and_qwen2() {
    let parts = [
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.weight",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ];
    // Twelve layers, so that sorting by index (not by name) is visible: 2 before 10.
    let mut names = per_block(12, &parts, "model.layers.");
    names.extend(
        [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ]
        .map(String::from),
    );
    let f = file(&names);
    let config = json!({"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 12,
        "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
        "vocab_size": 151936, "max_position_embeddings": 32768});
    let d = describe(&f, Some(&config));
    assert_eq!((d.arch, d.arch_name.as_str()), (Arch::Llama, "qwen2"));
    assert_eq!(d.hyper.hidden, Some(896));
    assert_eq!(d.hyper.kv_heads, Some(2));
    assert_eq!(d.hyper.ffn, Some(4864));
    assert_eq!(d.hyper.vocab, Some(151936));
    assert_eq!(d.hyper.context, Some(32768));
    assert_eq!(d.head.as_deref(), Some("lm_head.weight"));
    assert_eq!(d.final_norm.as_deref(), Some("model.norm.weight"));
    assert_eq!(d.notice, None);
    let indices: Vec<usize> = d.blocks.iter().map(|b| b.index).collect();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    let b = &d.blocks[10];
    let roles: Vec<&str> = b.linears.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["q", "k", "v", "o", "gate", "up", "down"]);
    assert_eq!(
        b.linears[0].tensor,
        "model.layers.10.self_attn.q_proj.weight"
    );
    assert_eq!(
        b.linears[0].bias.as_deref(),
        Some("model.layers.10.self_attn.q_proj.bias")
    );
    assert_eq!(b.linears[3].bias, None);
    assert_eq!(b.norms.len(), 2);
    assert!(d.unassigned.is_empty());

    // Without a config the names alone say LLaMA family; a Mistral config is the same family.
    assert_eq!(describe(&f, None).arch, Arch::Llama);
    let d = describe(&f, Some(&json!({"architectures": ["MistralForCausalLM"]})));
    assert_eq!(
        (d.arch, d.arch_name.as_str()),
        (Arch::Llama, "MistralForCausalLM")
    );
}

#[test]
fn gpt2_with_and_without_prefix() {
    let parts = [
        "ln_1.weight",
        "ln_1.bias",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    ];
    for prefix in ["", "transformer."] {
        let mut names = per_block(2, &parts, &format!("{prefix}h."));
        names.extend(
            ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
                .map(|n| format!("{prefix}{n}")),
        );
        let d = describe(&file(&names), None);
        assert_eq!(d.arch, Arch::Gpt2, "prefix {prefix:?}");
        assert_eq!(d.blocks.len(), 2);
        let roles: Vec<&str> = d.blocks[1]
            .linears
            .iter()
            .map(|l| l.role.as_str())
            .collect();
        assert_eq!(roles, ["c_attn", "c_proj", "c_fc", "mlp_c_proj"]);
        assert!(d.blocks[1]
            .linears
            .iter()
            .all(|l| l.transposed && l.bias.is_some()));
        assert_eq!(
            d.blocks[1].linears[3].tensor,
            format!("{prefix}h.1.mlp.c_proj.weight")
        );
        assert_eq!(d.blocks[0].norms.len(), 4);
        assert_eq!(d.embedding, Some(format!("{prefix}wte.weight")));
        assert_eq!(d.final_norm, Some(format!("{prefix}ln_f.weight")));
        // wpe and the final norm's bias are in no block.
        assert_eq!(
            d.unassigned,
            [format!("{prefix}wpe.weight"), format!("{prefix}ln_f.bias")]
        );
        assert!(d.notice.as_deref().unwrap_or("").contains("tied"));
    }
}

#[test]
fn opt() {
    let parts = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.out_proj.weight",
        "self_attn_layer_norm.weight",
        "fc1.weight",
        "fc2.weight",
        "final_layer_norm.weight",
    ];
    let mut names = per_block(3, &parts, "model.decoder.layers.");
    names.push("model.decoder.embed_tokens.weight".into());
    let d = describe(
        &file(&names),
        Some(&json!({"model_type": "opt", "ffn_dim": 3072})),
    );
    assert_eq!(d.arch, Arch::Opt);
    assert_eq!(d.blocks.len(), 3);
    let roles: Vec<&str> = d.blocks[2]
        .linears
        .iter()
        .map(|l| l.role.as_str())
        .collect();
    assert_eq!(roles, ["q", "k", "v", "out", "fc1", "fc2"]);
    assert_eq!(d.hyper.ffn, Some(3072));
    assert_eq!(d.hyper.layers, Some(3));
}

#[test]
fn unknown_architecture_lists_every_tensor() {
    let names: Vec<String> = ["encoder.conv.weight", "decoder.proj.weight"]
        .map(String::from)
        .to_vec();
    let mut f = file(&names);
    let d = describe(&f, None);
    assert_eq!(d.arch, Arch::Unknown);
    assert!(d.blocks.is_empty());
    assert_eq!(d.unassigned, names);
    assert_eq!(
        d.notice.as_deref(),
        Some("unknown architecture: per-tensor statistics only")
    );

    f.metadata.insert(
        "general.architecture".into(),
        MetaValue::Str("mamba".into()),
    );
    let d = describe(&f, None);
    assert_eq!((d.arch, d.arch_name.as_str()), (Arch::Unknown, "mamba"));
    assert_eq!(d.unassigned, names);
    assert_eq!(
        d.notice.as_deref(),
        Some("unknown architecture mamba: per-tensor statistics only")
    );
}
