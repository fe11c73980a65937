//! Training in latent space (a small U-Net and CLIP on the sd-tiny fixture's VAE) with the VAE
//! latents and caption embeddings cached on disk: a second run reads every one back instead of
//! encoding, and trains to exactly the same losses as the first run and as a run without stores.

use std::path::{Path, PathBuf};

use spatiallock_model::data::open::open_dataset;
use spatiallock_model::hooks::NoHooks;
use spatiallock_model::pipeline::{fresh_base, save_base, SpatialLockModel};
use spatiallock_model::train::encoder_cache::{CacheReport, CacheStats};
use spatiallock_model::train::run::{train, RunOptions};
use spatiallock_model::train::trainer::{Mode, RunConfig, Trainer};
use spatiallock_protocol::expand::{train_spec, trial_from_value, TrainSpec};
use spatiallock_protocol::model_config::ModelConfig;
use tch::Device;

const STEPS: u64 = 3;
const BATCH: u64 = 4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nets/sd-tiny")
}

/// A small latent-space architecture: sd-tiny's U-Net and VAE shapes, a CLIP text tower as
/// wide as the U-Net's cross-attention.
fn arch() -> serde_json::Value {
    serde_json::json!({
        "name": "latent-tiny",
        "unet": {
            "sample_size": 16, "in_channels": 4, "out_channels": 4,
            "block_out_channels": [16, 32, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1, "cross_attention_dim": 16, "attention_head_dim": 4,
            "norm_num_groups": 8, "norm_eps": 1.0e-5
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
            "scaling_factor": 0.18215
        },
        "text_encoder": {
            "vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 77
        },
        "grounding": {"max_objects": 8, "fourier_freqs": 8, "mlp_hidden": 32},
        "perception": {"fpn_channels": 16, "fusion_dim": 16, "fusion_depth": 1, "fusion_heads": 4,
                       "head_convs": 1, "anchor_ratios": [0.5, 1.0, 2.0]}
    })
}

/// A base of that architecture: a fresh U-Net and text encoder, and the sd-tiny fixture's VAE.
fn base(dir: &Path) -> PathBuf {
    let base = dir.join("latent-tiny");
    let mut pixel = arch();
    pixel["vae"] = serde_json::Value::Null;
    let pixel: ModelConfig = serde_json::from_value(pixel).expect("architecture");
    let (_, unet_vs, text) = fresh_base(&pixel, 1, Device::Cpu).expect("fresh base");
    save_base(&base, &pixel, &unet_vs, &text).expect("saved");
    std::fs::create_dir_all(base.join("vae")).expect("mkdir");
    for file in std::fs::read_dir(fixture().join("vae")).expect("fixture") {
        let file = file.expect("entry").path();
        std::fs::copy(&file, base.join("vae").join(file.file_name().expect("name"))).expect("copy");
    }
    base
}

fn shapes_spec(base: &Path, data_seed: u64) -> TrainSpec {
    let v = serde_json::json!({
        "seed": 11,
        "model": {"arch": arch(), "base": {"path": base.display().to_string()}},
        "data": {"train": {"kind": "shapes", "split": "train", "count": 4, "seed": data_seed},
                 "val": [{"kind": "shapes", "split": "val", "count": 2}], "resolution": 32},
        "training": {"steps": STEPS, "batch_size": BATCH, "lr": 1e-3, "checkpoint_every": 1000,
                     "caption_dropout": 0.0},
    });
    let cfg = trial_from_value(v).expect("valid trial");
    let arch = cfg.arch().expect("resolved").clone();
    train_spec(&cfg, &arch)
}

/// What a run did: its losses, where its latents and caption embeddings came from, its stores.
struct Run {
    losses: Vec<f64>,
    latents: CacheStats,
    captions: CacheStats,
    stores: Vec<PathBuf>,
}

/// Trains `spec` for its steps.
fn run(spec: &TrainSpec, base: &Path, cache: Option<&Path>) -> Run {
    tch::set_num_threads(1);
    let data = open_dataset(&spec.data, spec.resolution).expect("dataset");
    let classes = data.categories().len() as i64;
    let model = SpatialLockModel::load(spec, base, classes, Device::Cpu).expect("model");
    assert!(model.vae.is_some(), "sd-tiny trains in latent space");
    let mut trainer = Trainer::new(model, data, RunConfig::from_spec(spec), Mode::Train).expect("trainer");
    if let Some(root) = cache {
        trainer = trainer.with_cache_dir(root).expect("cache");
    }
    let losses = (0..STEPS).map(|_| trainer.train_step().expect("step").loss).collect();
    let report = trainer.cache_report();
    Run {
        losses,
        latents: report.latents,
        captions: report.captions,
        stores: report.stores,
    }
}

fn all_from_disk(n: u64) -> CacheStats {
    CacheStats {
        computed: 0,
        from_disk: n,
        from_memory: 0,
    }
}

#[test]
fn a_second_run_reads_everything_from_disk_and_trains_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = base(tmp.path());
    let root = tmp.path().join("encoders");
    let spec = shapes_spec(&base, 5);
    let drawn = STEPS * BATCH;

    let cold = run(&spec, &base, Some(&root));
    for stats in [cold.latents, cold.captions] {
        assert!(stats.computed >= 1, "{stats:?}");
        assert_eq!(stats.computed + stats.from_disk, drawn, "{stats:?}");
        assert_eq!(stats.from_memory, 0, "with a store, nothing is kept in memory");
    }
    assert_eq!(
        cold.stores.len(),
        2,
        "a latent store and a caption store: {:?}",
        cold.stores
    );
    assert!(cold
        .stores
        .iter()
        .all(|s| s.starts_with(&root) && s.join("meta.json").is_file()));
    assert!(cold.losses.iter().all(|l| l.is_finite()), "{:?}", cold.losses);

    let warm = run(&spec, &base, Some(&root));
    assert_eq!(
        warm.latents,
        all_from_disk(drawn),
        "every latent of the second run is read back"
    );
    assert_eq!(
        warm.captions,
        all_from_disk(drawn),
        "every caption embedding is read back"
    );
    assert_eq!(warm.losses, cold.losses, "the stores must not change a single loss");

    let memory = run(&spec, &base, None);
    assert_eq!(memory.losses, cold.losses, "in memory or on disk, the same numbers");
    assert!(memory.stores.is_empty());
    assert_eq!(memory.latents.computed + memory.latents.from_memory, drawn);

    // Other images get stores of their own; the first ones are untouched.
    let other = run(&shapes_spec(&base, 6), &base, Some(&root));
    assert!(other.latents.computed >= 1 && other.captions.computed >= 1);
    assert!(other.stores.iter().all(|s| !cold.stores.contains(s)));
    assert_eq!(std::fs::read_dir(&root).expect("root").count(), 4);
    let again = run(&spec, &base, Some(&root));
    assert_eq!(again.losses, cold.losses);
    assert_eq!(again.latents, all_from_disk(drawn));
}

#[test]
fn train_keeps_its_stores_where_the_run_options_say() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = base(tmp.path());
    let root = tmp.path().join("cache");
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: &out,
        resume: None,
        checkpoint_every: 0,
        device: Device::Cpu,
        cache_dir: Some(&root),
        data_parallel: None,
    };
    tch::set_num_threads(1);
    train(&shapes_spec(&base, 5), &base, &opts, &mut NoHooks).expect("trains");
    let mut stores: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("the cache root was created")
        .map(|e| e.expect("entry").path())
        .collect();
    stores.sort();
    let meta = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).expect("meta")).expect("json")
    };
    let [captions, latents] = stores.as_slice() else {
        panic!("expected a caption store and a latent store: {stores:?}");
    };
    let (captions, latents) = (meta(captions), meta(latents));
    assert_eq!(latents["key"]["kind"], "latents");
    assert_eq!(latents["shape"], serde_json::json!([4, 16, 16]), "{latents}");
    assert!(latents["key"]["dataset"]
        .as_str()
        .is_some_and(|d| d.starts_with("shapes-v1:5:")));
    assert_eq!(captions["key"]["kind"], "captions");
    assert_eq!(captions["shape"], serde_json::json!([77, 16]), "{captions}");

    // The run says what its caches did, beside its checkpoints.
    let report = CacheReport::read(&out).expect("encoder_cache.json");
    let mut reported = report.stores.clone();
    reported.sort();
    assert_eq!(reported, stores);
    assert_eq!(report.latents.computed + report.latents.from_disk, STEPS * BATCH);
    assert!(report.summary().contains("encoder caches: inputs"));
}
