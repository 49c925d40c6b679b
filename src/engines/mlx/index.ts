/**
 * agentrt's MLX inference engine (Apple's MLX through the @frost-beta/mlx Node-API binding, CPU on Linux):
 * `MlxEngine.load(options)` loads a GGUF file or an mlx-community folder (see load.ts).
 */
export { MlxEngine } from "./engine.js";
export type { MlxEngineParts } from "./load.js";
