//! The shipped tiny configs build with the same structs as SD v1.4 and run in pixel space.

use spatiallock_model::nn::clip::ClipTextModel;
use spatiallock_model::nn::params::{count_params, is_grounding_param};
use spatiallock_model::nn::transformer::FuserKind;
use spatiallock_model::nn::unet::{GroundingInput, GroundingSetup, UNet2DConditionModel};
use spatiallock_protocol::trial::builtin_model;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[test]
fn tiny_pixel_space_model_runs_with_grounding() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let cfg = builtin_model("tiny").expect("tiny config");
    assert!(cfg.vae.is_none(), "pixel space");
    let vs = VarStore::new(Device::Cpu);
    let setup = GroundingSetup::from_model(&cfg, FuserKind::SpatialLock, vec!["down.2".into(), "up.0".into()]);
    let unet = UNet2DConditionModel::new(&vs.root(), &cfg.unet, setup);
    let clip = ClipTextModel::new(&(vs.root() / "text_encoder"), &cfg.text_encoder);
    assert!(count_params(&vs, is_grounding_param) > 0);

    let ids = Tensor::from_slice(&[49406i64, 320, 2368, 49407])
        .view([1, 4])
        .repeat([2, 1]);
    let text = tch::no_grad(|| clip.forward(&ids));
    let sample = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let boxes = Tensor::from_slice(&[0.1f32, 0.1, 0.5, 0.5, 0.4, 0.4, 0.9, 0.8])
        .view([1, 2, 4])
        .repeat([2, 1, 1]);
    let phrases = text.pooled.unsqueeze(1).repeat([1, 2, 1]);
    let masks = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    let g = GroundingInput {
        boxes: &boxes,
        phrases: &phrases,
        masks: &masks,
        scale: 1.0,
    };
    let t = Tensor::from_slice(&[3i64, 700]);
    let out = tch::no_grad(|| unet.forward(&sample, &t, &text.last_hidden_state, Some(g))).expect("forward");
    assert_eq!(out.eps.size(), [2, 3, 32, 32]);
    assert_eq!(out.down.len(), 3);
    assert_eq!(out.down[0].size(), [2, 32, 16, 16]);
    assert_eq!(out.eps.isfinite().all().int64_value(&[]), 1);
}
