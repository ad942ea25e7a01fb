import { runBench } from './bench.ts';

declare global {
  interface Window {
    __parleyBench?: (rounds: number, duration: number) => ReturnType<typeof runBench>;
  }
}
window.__parleyBench = runBench;
