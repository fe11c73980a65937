//! The benchmark code paths run (timings are printed by `spatiallock bench`, never asserted).

use spatiallock_model::bench::{sample, train_step, BenchSetup, Variant};
use spatiallock_model::ModelError;
use spatiallock_protocol::trial::builtin_model;
use tch::Device;

fn setup() -> BenchSetup {
    let mut s = BenchSetup::new(builtin_model("bench-tiny").expect("bench-tiny"), Device::Cpu);
    s.batch = 2;
    s.steps = 2;
    s
}

#[test]
fn bench_train_step_runs_every_variant_in_both_precisions() {
    tch::set_num_threads(1);
    for bf16 in [false, true] {
        for v in [Variant::Gligen, Variant::Spatiallock, Variant::SpatiallockPog] {
            let s = BenchSetup { bf16, ..setup() };
            let r = train_step(&s, v, 0).expect("runs");
            assert!(r.trainable_params > 0, "{v:?}");
            assert_eq!(r.cuda_memory_bytes, None, "no CUDA memory on the CPU");
        }
    }
    let r = sample(&setup(), Variant::Spatiallock, 0).expect("samples");
    assert_eq!(r.unit, "s/image");
}

#[test]
fn bench_sizes_the_model_cannot_take_are_refused() {
    let s = BenchSetup { size: 30, ..setup() };
    let err = train_step(&s, Variant::Spatiallock, 0).expect_err("30 is not a multiple of 4");
    assert!(
        matches!(err, ModelError::Input(ref m) if m.contains("size 30")),
        "{err}"
    );
    let s = BenchSetup {
        grounding_fraction: 1.5,
        ..setup()
    };
    assert!(sample(&s, Variant::Spatiallock, 0).is_err());
}
