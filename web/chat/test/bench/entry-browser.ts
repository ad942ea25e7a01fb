import { runBench } from './bench.ts';

declare global {
  interface Window {
    __parleyBench?: (seconds: number) => ReturnType<typeof runBench>;
  }
}
window.__parleyBench = runBench;
