//! Parity of the networks with diffusers/transformers on tiny random models
//! (`model/tests/fixtures/nets`, made by `scripts/fixtures/make_nets.sh`).

mod common;

use common::{assert_close, fixture_dir, read_tensors};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use spatiallock_model::nn::clip::ClipOutput;
use spatiallock_model::nn::grounding::fourier_embed;
use spatiallock_model::nn::model_dir::{load_text_encoder, load_unet, load_vae};
use spatiallock_model::nn::params::{is_grounding_param, set_trainable, unet_trainable};
use spatiallock_model::nn::transformer::FuserKind;
use spatiallock_model::nn::unet::{GroundingInput, GroundingSetup};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    fixture_dir("nets")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    read_tensors(fixtures().join("io").join(name))
}

fn tiny_spatiallock_setup(blocks: &[&str]) -> GroundingSetup {
    GroundingSetup {
        kind: FuserKind::SpatialLock,
        blocks: blocks.iter().map(|s| s.to_string()).collect(),
        phrase_dim: 16,
        mlp_hidden: 32,
        fourier_freqs: 8,
        max_objects: 30,
    }
}

#[test]
fn unet_eps_and_feature_taps_match_diffusers() {
    let t = io("unet.safetensors");
    let unet = load_unet(&fixtures().join("sd-tiny"), Device::Cpu, None).expect("loads");
    assert!(unet.report.initialised.is_empty());
    let out = tch::no_grad(|| {
        unet.model
            .forward(&t["sample"], &t["timestep"], &t["encoder_hidden_states"], None)
    })
    .expect("forward");
    assert_close("unet eps", &out.eps, &t["eps"], 1e-4);
    for i in 0..3 {
        assert_close(
            &format!("tap down.{i}"),
            &out.down[i],
            &t[&format!("tap_down_{i}")],
            1e-4,
        );
    }
    assert_close("tap mid", &out.mid, &t["tap_mid"], 1e-4);
}

#[test]
fn gligen_projection_and_gated_self_attention_match_diffusers() {
    let t = io("unet_gligen.safetensors");
    let unet = load_unet(&fixtures().join("gligen-tiny"), Device::Cpu, None).expect("loads");
    assert_eq!(unet.model.grounding().kind, FuserKind::Gligen);
    assert!(
        unet.report.initialised.is_empty(),
        "a GLIGEN checkpoint carries every grounding weight"
    );
    let g = GroundingInput {
        boxes: &t["boxes"],
        phrases: &t["phrase_embeddings"],
        masks: &t["masks"],
        scale: 1.0,
    };
    assert_close("fourier", &fourier_embed(&t["boxes"], 8), &t["fourier"], 1e-4);
    let objs = tch::no_grad(|| unet.model.grounding_tokens(&g))
        .expect("tokens")
        .expect("grounded model");
    assert_close("position_net objs", &objs, &t["objs"], 1e-4);
    let (sample, ts, ctx) = (&t["sample"], &t["timestep"], &t["encoder_hidden_states"]);
    let out = tch::no_grad(|| unet.model.forward(sample, ts, ctx, Some(g))).expect("forward");
    assert_close("gligen eps", &out.eps, &t["eps"], 1e-4);
    let plain = tch::no_grad(|| unet.model.forward(sample, ts, ctx, None)).expect("forward");
    assert_close("gligen eps without grounding", &plain.eps, &t["eps_no_grounding"], 1e-4);
}

#[test]
fn vae_encode_and_decode_match_diffusers() {
    let t = io("vae.safetensors");
    let vae = load_vae(&fixtures().join("sd-tiny"), Device::Cpu).expect("loads");
    let (mean, logvar) = tch::no_grad(|| vae.model.encode(&t["image"]));
    assert_close("vae latent mean", &mean, &t["latent_mean"], 1e-4);
    assert_close("vae latent logvar", &logvar, &t["latent_logvar"], 1e-4);
    let decoded = tch::no_grad(|| vae.model.decode(&t["latent_mean"]));
    assert_close("vae decode", &decoded, &t["decoded"], 1e-4);
}

#[test]
fn clip_hidden_states_and_pooled_output_match_transformers() {
    let t = io("clip.safetensors");
    let clip = load_text_encoder(&fixtures().join("sd-tiny"), Device::Cpu).expect("loads");
    let ClipOutput {
        last_hidden_state,
        pooled,
    } = tch::no_grad(|| clip.model.forward(&t["input_ids"]));
    assert_close(
        "clip last_hidden_state",
        &last_hidden_state,
        &t["last_hidden_state"],
        1e-4,
    );
    assert_close("clip pooled", &pooled, &t["pooled"], 1e-4);
}

#[test]
fn fresh_spatiallock_grounding_returns_exactly_the_base_eps() {
    let t = io("unet_gligen.safetensors");
    let dir = fixtures().join("sd-tiny");
    let base = load_unet(&dir, Device::Cpu, None).expect("loads");
    let grounded = load_unet(&dir, Device::Cpu, Some(tiny_spatiallock_setup(&["down.1", "up.1"]))).expect("loads");
    assert!(
        !grounded.report.initialised.is_empty(),
        "grounding modules are initialised fresh"
    );
    assert!(grounded.report.initialised.iter().all(|k| is_grounding_param(k)));
    let g = GroundingInput {
        boxes: &t["boxes"],
        phrases: &t["phrase_embeddings"],
        masks: &t["masks"],
        scale: 1.0,
    };
    let (sample, ts, ctx) = (&t["sample"], &t["timestep"], &t["encoder_hidden_states"]);
    let a = tch::no_grad(|| base.model.forward(sample, ts, ctx, None)).expect("forward");
    let b = tch::no_grad(|| grounded.model.forward(sample, ts, ctx, Some(g))).expect("forward");
    assert!(
        a.eps.equal(&b.eps),
        "tanh(0) gates must make the grounding layers an exact identity"
    );
}

#[test]
fn gradients_reach_only_trainable_modules() {
    let t = io("unet_gligen.safetensors");
    let loaded = load_unet(
        &fixtures().join("sd-tiny"),
        Device::Cpu,
        Some(tiny_spatiallock_setup(&["down.1", "up.1"])),
    )
    .expect("loads");
    // The default trainable set of a trial config: grounding (+ perception and loss weights,
    // which live outside the U-Net).
    let groups = spatiallock_protocol::trial::TrainingConfig::default().trainable;
    let trainable = set_trainable(&loaded.vs, unet_trainable(&groups));
    assert!(trainable > 0);
    let g = GroundingInput {
        boxes: &t["boxes"],
        phrases: &t["phrase_embeddings"],
        masks: &t["masks"],
        scale: 1.0,
    };
    let out = loaded
        .model
        .forward(&t["sample"], &t["timestep"], &t["encoder_hidden_states"], Some(g))
        .expect("forward");
    out.eps.square().mean(Kind::Float).backward();
    let mut gated = 0;
    for (name, var) in loaded.vs.variables() {
        let grad = var.grad();
        if is_grounding_param(&name) {
            assert!(grad.defined(), "{name} should get a gradient");
            if name.ends_with("alpha_attn") || name.ends_with("alpha_dense") {
                assert!(
                    grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                    "{name}: the gates move first"
                );
                gated += 1;
            }
        } else {
            assert!(!grad.defined(), "frozen {name} got a gradient");
        }
    }
    assert_eq!(
        gated,
        2 * (2 + 3),
        "two gates per grounding layer (2 in down.1, 3 in up.1)"
    );
}

#[test]
fn tokenizer_ids_equal_transformers() {
    let vocab = spatiallock_model::assets::clip_bpe_vocab().expect("CLIP vocabulary installed by scripts/setup.sh");
    let tok = spatiallock_model::nn::tokenizer::ClipTokenizer::from_bpe_gz(&vocab).expect("vocabulary");
    assert_eq!(tok.vocab_size(), 49408);
    let text = std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).expect("cases");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(cases.len() >= 25);
    for case in cases {
        let caption = case["text"].as_str().expect("text");
        let want: Vec<i64> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_i64().expect("id"))
            .collect();
        assert_eq!(tok.encode(caption), want, "caption {caption:?}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn edited_unet(edit: impl Fn(&mut Vec<(String, Tensor)>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixtures().join("sd-tiny"), dir.path());
    let file = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).expect("read");
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &file).expect("write");
    let root = dir.path().to_path_buf();
    (dir, root)
}

#[test]
fn missing_and_misshapen_weights_are_named() {
    let key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let (_keep, dir) = edited_unet(|t| t.retain(|(k, _)| k != key));
    let err = load_unet(&dir, Device::Cpu, None).expect_err("missing key").to_string();
    assert!(err.contains("missing from the file") && err.contains(key), "{err}");

    let (_keep, dir) = edited_unet(|t| {
        for (k, v) in t.iter_mut() {
            if k == "conv_in.weight" {
                *v = Tensor::zeros([16, 4, 5, 5], (Kind::Half, Device::Cpu));
            }
        }
    });
    let err = load_unet(&dir, Device::Cpu, None).expect_err("bad shape").to_string();
    assert!(
        err.contains("conv_in.weight: file has [16, 4, 5, 5], model expects [16, 4, 3, 3]"),
        "{err}"
    );

    let (_keep, dir) = edited_unet(|t| t.push(("extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))));
    let err = load_unet(&dir, Device::Cpu, None).expect_err("extra key").to_string();
    assert!(
        err.contains("not in the model") && err.contains("extra.weight"),
        "{err}"
    );
}

#[test]
fn truncated_or_foreign_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixtures().join("sd-tiny"), dir.path());
    let file = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = load_vae(dir.path(), Device::Cpu).expect_err("truncated").to_string();
    assert!(err.contains("not a readable safetensors file"), "{err}");
    std::fs::write(&file, b"this is not a safetensors file").expect("write");
    assert!(load_vae(dir.path(), Device::Cpu).is_err());
    std::fs::write(dir.path().join("vae/config.json"), b"{not json").expect("write");
    let err = load_vae(dir.path(), Device::Cpu).expect_err("bad config").to_string();
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
}

#[test]
fn bad_forward_inputs_name_the_tensor() {
    let t = io("unet_gligen.safetensors");
    let unet = load_unet(&fixtures().join("gligen-tiny"), Device::Cpu, None).expect("loads");
    let (sample, ts, ctx) = (&t["sample"], &t["timestep"], &t["encoder_hidden_states"]);
    let run = |boxes: &Tensor, phrases: &Tensor, masks: &Tensor| {
        let g = GroundingInput {
            boxes,
            phrases,
            masks,
            scale: 1.0,
        };
        tch::no_grad(|| unet.model.forward(sample, ts, ctx, Some(g)))
            .expect_err("rejected")
            .to_string()
    };
    let (boxes, phrases, masks) = (&t["boxes"], &t["phrase_embeddings"], &t["masks"]);
    assert!(run(&boxes.view([2, 12]), phrases, masks).starts_with("boxes: expected shape [2, N, 4]"));
    let many = Tensor::zeros([2, 31, 4], (Kind::Float, Device::Cpu));
    let err = run(
        &many,
        &Tensor::zeros([2, 31, 16], (Kind::Float, Device::Cpu)),
        &Tensor::zeros([2, 31], (Kind::Float, Device::Cpu)),
    );
    assert!(
        err.contains("31 objects per image, more than the maximum of 30"),
        "{err}"
    );
    assert!(run(boxes, &phrases.narrow(0, 0, 1), masks).starts_with("phrase_embeddings: expected shape [2, 3, 16]"));
    assert!(run(boxes, phrases, &masks.narrow(1, 0, 2)).starts_with("masks: expected shape [2, 3]"));
    let err = run(&(boxes * 512.0), phrases, masks);
    assert!(err.contains("outside [0, 1]"), "{err}");
    let bad_ctx = tch::no_grad(|| unet.model.forward(sample, ts, &ctx.narrow(0, 0, 1), None)).expect_err("rejected");
    assert!(
        bad_ctx
            .to_string()
            .starts_with("encoder_hidden_states: expected shape [2, L, 16]"),
        "{bad_ctx}"
    );
}
