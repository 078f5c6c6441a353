// Verdicts by exact SQL text: the classifier's cache (see cache/text-lru.ts for its bounds).

import { TextLru } from '../cache/text-lru.js';
import type { PolicyVerdict } from './verdict.js';

export class VerdictCache extends TextLru<PolicyVerdict> {}
