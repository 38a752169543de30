#!/usr/bin/env node
// The `smartkv` CLI; the code is TypeScript compiled to dist/ by `npm install`.
import '../dist/cli/main.js';
