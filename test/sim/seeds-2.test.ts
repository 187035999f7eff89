/** CI seed budget, block 2 of 4 (see seed-block.ts). */
import { seedBlock } from './seed-block.ts';

seedBlock(251, 250);
