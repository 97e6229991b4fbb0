/** The Dawn toggles a hardware adapter is opened with (src/runtime/webgpu/device.ts). */
import { describe, expect, it } from 'vitest';
import { hardwareToggles } from '../../../src/runtime/webgpu/device.js';

describe('hardwareToggles', () => {
  it('unlocks f16 and subgroup matrices and turns Dawn robustness and workgroup zeroing off by default', () => {
    expect(hardwareToggles({})).toEqual(['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia', 'disable_robustness', 'disable_workgroup_init']);
  });
  it('MCPC_DAWN_ROBUSTNESS=1 keeps Dawn\'s checks; MCPC_DAWN_FEATURES appends toggles', () => {
    expect(hardwareToggles({ MCPC_DAWN_ROBUSTNESS: '1', MCPC_DAWN_FEATURES: 'skip_validation,,dump_shaders' })).toEqual([
      'allow_unsafe_apis',
      'vulkan_enable_f16_on_nvidia',
      'skip_validation',
      'dump_shaders',
    ]);
  });
});
