//! The built-in evaluation detector learns shapes from real images.

use spatiallock_model::data::shapes::Shapes;
use spatiallock_model::data::Dataset;
use spatiallock_model::eval::detector::{train_detector, DetectorTraining, NmsSettings};
use spatiallock_model::eval::pipeline::{score, LayoutBoxes};
use spatiallock_model::hooks::NoHooks;
use spatiallock_protocol::trial::Split;
use tch::{Device, Tensor};

fn ap50_after(steps: u64) -> [f64; 12] {
    tch::set_num_threads(1);
    let train = Shapes::new(256, 1, Split::Train, 32);
    let run = DetectorTraining {
        resolution: 32,
        steps,
        batch_size: 16,
        lr: 3e-3,
        seed: 0,
    };
    let det = train_detector(&train, run, Device::Cpu, &mut NoHooks).expect("trains");
    let val = Shapes::new(64, 1, Split::Val, 32);
    let samples: Vec<_> = (0..val.len()).map(|i| val.get(i).expect("sample")).collect();
    let images = Tensor::stack(&samples.iter().map(|s| s.image.shallow_clone()).collect::<Vec<_>>(), 0);
    let dets = det.detect(&images, NmsSettings::default()).expect("detects");
    let layouts: Vec<LayoutBoxes> = samples
        .iter()
        .map(|s| LayoutBoxes {
            boxes: s.boxes.clone(),
            labels: s.labels.clone(),
        })
        .collect();
    score(&layouts, &dets, val.categories(), 32.0).stats
}

/// The evaluation detector is only worth its mAP if it finds real shapes: after the demo's and
/// the miniature's budget class of training (1500 steps) it must reach AP50 ≥ 0.85 on real
/// validation shapes (a detector that finds nothing scores 0). Measured: at least 0.90 on the
/// machine the bound was first set on, 0.894 on another (libtorch's CPU kernels differ in their
/// last bits between machines, and 1500 steps of training amplify that), so the bound leaves room. (Runs in the test command: about three minutes on one thread.)
#[test]
fn detector_reaches_high_ap50_on_real_shapes() {
    let stats = ap50_after(1500);
    println!(
        "detector after 1500 steps: AP {:.3} AP50 {:.3} AP75 {:.3}",
        stats[0], stats[1], stats[2]
    );
    assert!(stats[1] >= 0.85, "AP50 {:.3} after 1500 steps", stats[1]);
}

#[test]
fn torchscript_detectors_follow_the_contract() {
    use spatiallock_model::eval::detector::ScriptedDetector;
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/scripted_detector.pt");
    let det = ScriptedDetector::load(&path, Device::Cpu).expect("loads");
    // Images in [-1, 1]: the first white (score of the first row = mean brightness 1.0), the second black.
    let images = Tensor::cat(
        &[
            Tensor::ones([1, 3, 32, 32], (tch::Kind::Float, Device::Cpu)),
            -Tensor::ones([1, 3, 32, 32], (tch::Kind::Float, Device::Cpu)),
        ],
        0,
    );
    let dets = det
        .detect(
            &images,
            NmsSettings {
                score_threshold: 0.05,
                nms_iou: 0.5,
                max_detections: 100,
            },
        )
        .expect("detects");
    assert_eq!(dets.len(), 2);
    assert_eq!(dets[0].len(), 2, "padded rows (score 0) are dropped: {:?}", dets[0]);
    assert_eq!(dets[0][0].score, 1.0);
    assert_eq!(dets[0][0].bbox, [0.0, 0.0, 16.0, 16.0]);
    assert_eq!(dets[1].len(), 1, "below the score threshold: {:?}", dets[1]);
    assert_eq!(dets[1][0].label, 1);
    let bad = ScriptedDetector::load(std::path::Path::new("Cargo.toml"), Device::Cpu);
    assert!(bad.is_err());
}
