// typescript-eslint's recommended rules on the TypeScript sources, plus the layering rule the
// architecture depends on: imports only go down (see README, "Architecture").
import js from "@eslint/js";
import tseslint from "typescript-eslint";

const below = (room, allowed) => ({
  files: [`src/${room}/**/*.ts`],
  rules: {
    "no-restricted-imports": [
      "error",
      {
        patterns: allowed.map((group) => ({ group: [`**/${group}/**`], message: `src/${room} sits below src/${group}: imports only go down` })),
      },
    ],
  },
});

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "bench/results/**", "models/**", "src/server/dashboard/**", "**/*.mjs", "**/*.js"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { ecmaVersion: 2023, sourceType: "module" },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-explicit-any": "error",
      // Flags the `let x = fallback; try { x = … } catch { … }` idiom used on purpose across the tree.
      "no-useless-assignment": "off",
    },
  },
  // Each room may import only the rooms under it: ground (errors, ids, clock, events) < engines <
  // worker, store < actor < supervisor < runtime < server < cli. testing sits beside, for tests.
  below("engines", ["worker", "store", "actor", "supervisor", "runtime", "server", "cli", "testing", "cluster"]),
  below("worker", ["store", "actor", "supervisor", "runtime", "server", "cli", "testing", "cluster"]),
  below("store", ["worker", "actor", "supervisor", "runtime", "server", "cli", "testing", "cluster"]),
  below("actor", ["worker", "supervisor", "runtime", "server", "cli", "testing", "cluster"]),
  below("supervisor", ["runtime", "server", "cli", "testing", "cluster"]),
  below("cluster", ["worker", "actor", "supervisor", "runtime", "server", "cli", "testing"]),
  below("runtime", ["server", "cli", "testing"]),
  below("server", ["cli", "testing"]),
  { files: ["test/**/*.ts", "bench/**/*.ts"], rules: { "@typescript-eslint/no-explicit-any": "off" } },
);
