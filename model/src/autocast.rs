//! bf16 mixed precision: libtorch's autocast with an explicit dtype, on CUDA or the CPU.
//!
//! tch binds only CUDA autocast at its default dtype (fp16); the paper's recipe trains in bf16,
//! so `csrc/autocast.cpp` exposes the per-device controls and [`autocast_bf16`] scopes them.
//! Inside the scope, matmuls and convolutions run in bf16 and reductions, norms and losses in
//! fp32 (libtorch's autocast op lists); weights stay fp32, so the optimiser is unchanged.

use tch::{Device, Kind, Tensor};

extern "C" {
    fn spatiallock_autocast_set(device_type: i32, enabled: bool, scalar_type: i32);
    fn spatiallock_autocast_enabled(device_type: i32) -> bool;
    fn spatiallock_autocast_dtype(device_type: i32) -> i32;
    fn spatiallock_autocast_increment_nesting() -> i32;
    fn spatiallock_autocast_decrement_nesting() -> i32;
    fn spatiallock_autocast_clear_cache();
}

// c10::DeviceType and c10::ScalarType codes.
const DEVICE_CPU: i32 = 0;
const DEVICE_CUDA: i32 = 1;
const SCALAR_BF16: i32 = 15;

fn device_type(device: Device) -> i32 {
    match device {
        Device::Cuda(_) => DEVICE_CUDA,
        _ => DEVICE_CPU,
    }
}

/// Restores the previous autocast state of a device when dropped (also on unwinding).
struct Scope {
    device_type: i32,
    was_enabled: bool,
    was_dtype: i32,
}

impl Drop for Scope {
    fn drop(&mut self) {
        // SAFETY: plain setters of libtorch's thread-local autocast state; the codes came from
        // libtorch itself (`was_dtype`) or are the constants above.
        unsafe {
            if spatiallock_autocast_decrement_nesting() == 0 {
                spatiallock_autocast_clear_cache();
            }
            spatiallock_autocast_set(self.device_type, self.was_enabled, self.was_dtype);
        }
    }
}

/// Runs `f` with bf16 autocast on `device` (CUDA or CPU); the previous state is restored after.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let device_type = device_type(device);
    // SAFETY: getters/setters of libtorch's thread-local autocast state, no pointers involved.
    let _scope = unsafe {
        let scope = Scope {
            device_type,
            was_enabled: spatiallock_autocast_enabled(device_type),
            was_dtype: spatiallock_autocast_dtype(device_type),
        };
        spatiallock_autocast_set(device_type, true, SCALAR_BF16);
        spatiallock_autocast_increment_nesting();
        scope
    };
    f()
}

/// Whether bf16 autocast is on for `device` in this thread.
pub fn is_bf16_autocast(device: Device) -> bool {
    let device_type = device_type(device);
    // SAFETY: getters of libtorch's thread-local autocast state.
    unsafe { spatiallock_autocast_enabled(device_type) && spatiallock_autocast_dtype(device_type) == SCALAR_BF16 }
}

/// `t` in fp32 (a no-op when it already is): losses are computed in fp32 whatever the forward ran in.
pub fn to_f32(t: &Tensor) -> Tensor {
    if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmuls_run_in_bf16_inside_the_scope_only() {
        tch::set_num_threads(1);
        let a = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([8, 2], (Kind::Float, Device::Cpu));
        assert!(!is_bf16_autocast(Device::Cpu));
        let x = Tensor::ones([1, 2, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([3, 2, 1, 1], (Kind::Float, Device::Cpu));
        let (inside, conv) = autocast_bf16(Device::Cpu, || {
            assert!(is_bf16_autocast(Device::Cpu));
            (a.matmul(&b), x.conv2d(&w, None::<Tensor>, [1], [0], [1], 1))
        });
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(conv.kind(), Kind::BFloat16);
        assert_eq!(inside.to_kind(Kind::Float).double_value(&[0, 0]), 8.0);
        assert!(!is_bf16_autocast(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }

    /// (enabled, dtype code) of CPU autocast in this thread.
    fn cpu_state() -> (bool, i32) {
        // SAFETY: getters of libtorch's thread-local autocast state.
        unsafe {
            (
                spatiallock_autocast_enabled(DEVICE_CPU),
                spatiallock_autocast_dtype(DEVICE_CPU),
            )
        }
    }

    #[test]
    fn scopes_restore_the_exact_previous_state_when_nested_and_on_panic() {
        tch::set_num_threads(1);
        // A previous state that differs from the scope's in both fields: off, fp16 (code 5).
        // Autocast state is thread-local, so this cannot leak into other tests.
        const HALF: i32 = 5;
        // SAFETY: setter of libtorch's thread-local autocast state, with valid codes.
        unsafe { spatiallock_autocast_set(DEVICE_CPU, false, HALF) };
        autocast_bf16(Device::Cpu, || {
            autocast_bf16(Device::Cpu, || assert_eq!(cpu_state(), (true, SCALAR_BF16)));
            assert_eq!(
                cpu_state(),
                (true, SCALAR_BF16),
                "the inner scope restores the outer one"
            );
        });
        assert_eq!(
            cpu_state(),
            (false, HALF),
            "the outer scope restores what was there before"
        );
        let caught = std::panic::catch_unwind(|| autocast_bf16(Device::Cpu, || panic!("in the forward")));
        assert!(caught.is_err());
        assert_eq!(cpu_state(), (false, HALF), "a panic inside the scope restores it too");
        // SAFETY: as above; back to libtorch's default for the CPU (off, bf16).
        unsafe { spatiallock_autocast_set(DEVICE_CPU, false, SCALAR_BF16) };
    }
}
