// Lint rules for the plugin and its tests: typescript-eslint's strict, type-checked set.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
    { ignores: ['build/', 'dist/', 'node_modules/', '*.mjs', 'test/**/*.mjs'] },
    js.configs.recommended,
    ...tseslint.configs.strictTypeChecked,
    {
        languageOptions: {
            parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
        },
        rules: {
            '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
            '@typescript-eslint/no-non-null-assertion': 'off',
        },
    },
    {
        // node:test's describe/it return promises the runner itself awaits; the stand-in's
        // base classes are empty, as CVAT's abstract ones are to a plugin.
        files: ['test/**/*.ts'],
        rules: {
            '@typescript-eslint/no-floating-promises': 'off',
            '@typescript-eslint/no-extraneous-class': 'off',
        },
    },
);
