//! Parity of PoG's losses, matcher, box coder and NMS with torchvision, and of DDIM with
//! diffusers (`model/tests/fixtures/training`, made by `scripts/fixtures/make_training.sh`).

mod common;

use common::{assert_close, fixture_dir, read_tensors};

use std::collections::HashMap;

use spatiallock_model::diffusion::ddim::Ddim;
use spatiallock_model::diffusion::schedule::NoiseSchedule;
use spatiallock_model::nn::perception::matcher::match_anchors;
use spatiallock_model::ops::boxes::{batched_nms, box_iou, decode_boxes, encode_boxes, generalized_box_iou};
use spatiallock_model::ops::losses::{giou_loss, sigmoid_focal_loss, smooth_l1};
use tch::{Kind, Tensor};

fn io(name: &str) -> HashMap<String, Tensor> {
    read_tensors(fixture_dir("training").join(name))
}

#[test]
fn focal_loss_matches_torchvision() {
    let t = io("focal.safetensors");
    let loss = sigmoid_focal_loss(&t["logits"], &t["targets"], 0.25, 2.0);
    assert_close("focal none", &loss, &t["loss_none"], 1e-6);
    assert_close("focal sum", &loss.sum(Kind::Float), &t["loss_sum"], 1e-6);
}

#[test]
fn box_ious_and_losses_match_torchvision() {
    let t = io("giou.safetensors");
    let (a, b) = (&t["boxes1"], &t["boxes2"]);
    assert_close("box_iou", &box_iou(a, b), &t["iou_matrix"], 1e-6);
    assert_close(
        "generalized_box_iou",
        &generalized_box_iou(a, b),
        &t["giou_matrix"],
        1e-6,
    );
    let loss = giou_loss(a, b);
    assert_close("giou loss", &loss, &t["giou_loss_none"], 1e-6);
    assert_close("giou loss mean", &loss.mean(Kind::Float), &t["giou_loss_mean"], 1e-6);
    let sl1 = smooth_l1(&(a / 100.0), &(b / 100.0), 1.0 / 9.0);
    assert_close("smooth l1", &sl1, &t["smooth_l1_none"], 1e-6);
}

#[test]
fn matcher_matches_torchvision_on_crafted_cases() {
    let t = io("matcher.safetensors");
    for case in ["ties", "between", "lowq", "random", "zerogt"] {
        let ours = match_anchors(&t[&format!("iou_{case}")], 0.5, 0.4);
        let want = &t[&format!("matches_{case}")];
        assert!(ours.equal(want), "{case}: {ours:?} vs {want:?}");
    }
    // The random case's IoUs come from our own box_iou too.
    let iou = box_iou(&t["gt_random"], &t["anchors_random"]);
    assert_close("random iou", &iou, &t["iou_random"], 1e-6);
}

#[test]
fn box_coder_matches_torchvision() {
    let t = io("boxcoder.safetensors");
    assert_close("encode", &encode_boxes(&t["gt"], &t["anchors"]), &t["deltas"], 1e-6);
    assert_close(
        "decode",
        &decode_boxes(&t["random_deltas"], &t["anchors"]),
        &t["decoded"],
        1e-6,
    );
}

#[test]
fn batched_nms_matches_torchvision() {
    let t = io("nms.safetensors");
    for (thr, key) in [(0.5, "keep_05"), (0.7, "keep_07")] {
        let keep = batched_nms(&t["boxes"], &t["scores"], &t["idxs"], thr).expect("nms");
        let want: Vec<i64> = Vec::try_from(&t[key]).expect("ints");
        assert_eq!(keep, want, "threshold {thr}");
    }
}

#[test]
fn ddim_matches_diffusers() {
    let t = io("ddim.safetensors");
    let schedule = NoiseSchedule::stable_diffusion();
    assert_close("alphas_cumprod", &schedule.alphas_cumprod, &t["alphas_cumprod"], 1e-7);
    for n in [50i64, 20, 7] {
        let ddim = Ddim::new(&schedule, n).expect("ddim");
        let want: Vec<i64> = Vec::try_from(&t[&format!("timesteps_{n}")]).expect("ints");
        assert_eq!(ddim.timesteps(), want.as_slice(), "timesteps for {n} steps");
        let (eps, xs, x0s) = (&t[&format!("eps_{n}")], &t[&format!("x_{n}")], &t[&format!("x0_{n}")]);
        let mut x = t["x_T"].shallow_clone();
        for (k, &ts) in ddim.timesteps().iter().enumerate() {
            let k = k as i64;
            let out = ddim.step(&eps.get(k), ts, &x);
            assert_close(
                &format!("ddim {n} x0[{k}]"),
                &out.pred_original_sample,
                &x0s.get(k),
                1e-5,
            );
            assert_close(&format!("ddim {n} x[{k}]"), &out.prev_sample, &xs.get(k), 1e-5);
            x = out.prev_sample;
        }
    }
}
