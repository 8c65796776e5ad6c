// Architecture boundaries (checked in CI): agent/ and coordinator/ never import each other,
// and common/ does no I/O. Generated code is excluded from style rules.
import tseslint from 'typescript-eslint';

const ioModules = [
  'fs', 'node:fs', 'fs/promises', 'node:fs/promises', 'net', 'node:net', 'http', 'node:http',
  'http2', 'node:http2', 'child_process', 'node:child_process', 'worker_threads', 'node:worker_threads',
  'dgram', 'node:dgram', 'os', 'node:os', 'level', 'classic-level', 'memory-level', 'abstract-level',
  '@grpc/grpc-js', 'nice-grpc', 'systeminformation',
];

export default tseslint.config(
  { ignores: ['node_modules/**', 'common/gen/**', '.retrace/**', 'coverage/**'] },
  {
    files: ['**/*.ts'],
    languageOptions: { parser: tseslint.parser },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-debugger': 'error',
    },
  },
  {
    files: ['agent/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['**/coordinator/**', '**/coordinator'], message: 'agent/ must not import coordinator/: share through common/.' }] }],
    },
  },
  {
    files: ['coordinator/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['**/agent/**', '**/agent'], message: 'coordinator/ must not import agent/: share through common/.' }] }],
    },
  },
  {
    files: ['common/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        paths: ioModules.map((name) => ({ name, message: 'common/ does no I/O.' })),
        patterns: [{ group: ['**/coordinator/**', '**/agent/**', '**/scripts/**'], message: 'common/ imports neither role.' }],
      }],
      'no-restricted-globals': ['error', { name: 'fetch', message: 'common/ does no I/O.' }, { name: 'process', message: 'common/ does no I/O.' }],
    },
  },
);
