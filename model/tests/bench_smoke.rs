//! The benchmark code paths run (timings are printed by `spatiallock bench`, never asserted).

use spatiallock_model::bench::{train_step, Variant};

#[test]
fn bench_train_step_runs_every_variant() {
    tch::set_num_threads(1);
    for v in [Variant::Gligen, Variant::Spatiallock, Variant::SpatiallockPog] {
        let r = train_step(v, 0).expect("runs");
        assert!(r.trainable_params > 0, "{v:?}");
    }
}
