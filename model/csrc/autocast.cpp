// The autocast controls that tch does not bind: per-device enable and the autocast dtype.
// tch's `autocast` only toggles CUDA autocast with its default dtype (fp16); SpatialLock trains
// in bf16. Arguments are c10's DeviceType and ScalarType codes; nothing here throws.
#include <ATen/autocast_mode.h>

extern "C" {

void spatiallock_autocast_set(int device_type, bool enabled, int scalar_type) noexcept {
  auto device = static_cast<c10::DeviceType>(device_type);
  at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(scalar_type));
  at::autocast::set_autocast_enabled(device, enabled);
}

bool spatiallock_autocast_enabled(int device_type) noexcept {
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device_type));
}

int spatiallock_autocast_dtype(int device_type) noexcept {
  return static_cast<int>(at::autocast::get_autocast_dtype(static_cast<c10::DeviceType>(device_type)));
}

int spatiallock_autocast_increment_nesting() noexcept { return static_cast<int>(at::autocast::increment_nesting()); }

int spatiallock_autocast_decrement_nesting() noexcept { return static_cast<int>(at::autocast::decrement_nesting()); }

void spatiallock_autocast_clear_cache() noexcept { at::autocast::clear_cache(); }

}
