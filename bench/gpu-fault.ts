/**
 * `npx tsx bench/gpu-fault.ts`: why the run watches the device (src/runtime/webgpu/faults.ts). On whatever
 * adapter Dawn opens (llvmpipe here), a tfjs tensor one page past `maxBufferSize` is summed on webgpu:
 * tfjs-backend-webgpu raises no exception and reads back a wrong sum, while the device's uncaptured
 * validation error is what the fault watch records (and `mcpc run` stops on). No timing: the printed sum and
 * the recorded fault are the result.
 */
import { initBackend, tf } from '../src/runtime/tfjs/index.js';
import { openDawn } from '../src/runtime/webgpu/device.js';
import { gpuFaultMark, gpuFaultSince } from '../src/runtime/webgpu/faults.js';

process.env.EGL_PLATFORM ??= 'surfaceless';
const gpu = await openDawn();
if ('unavailable' in gpu) {
  console.log(`bench/gpu-fault: skipped: ${gpu.unavailable}`);
  process.exit(0);
}
await initBackend('webgpu');
const n = Math.floor(gpu.limits.maxBufferSize! / 4) + 1024;
const mark = gpuFaultMark();
let sum: number | string;
try {
  sum = (await tf.sum(tf.ones([n])).data())[0]!;
} catch (e) {
  sum = `an exception: ${(e as Error).message.split('\n')[0]}`;
}
const fault = gpuFaultSince(mark);
console.log(`device ${gpu.info.description || gpu.info.device}, maxBufferSize ${gpu.limits.maxBufferSize}`);
console.log(`tfjs on webgpu: the sum of ${n.toLocaleString('en-US')} ones = ${sum}`);
console.log(`fault watch: ${fault ? `${fault.kind}: ${fault.message} (and ${fault.more} more)` : 'nothing recorded'}`);
