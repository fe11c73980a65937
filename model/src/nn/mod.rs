//! Stable Diffusion v1.x networks in tch, laid out like diffusers so that weights load by
//! diffusers key names, plus SpatialLock's PoI grounding and the GLIGEN baseline.

pub mod attention;
pub mod clip;
pub mod diffusers_config;
pub mod grounding;
pub mod loss_weights;
pub mod model_dir;
pub mod params;
pub mod perception;
pub mod resnet;
pub mod summary;

pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;

pub use unet::{GroundingInput, UNet2DConditionModel, UNetOutput};
