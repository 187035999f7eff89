/** CI seed budget, block 1 of 4 (see seed-block.ts). */
import { seedBlock } from './seed-block.ts';

seedBlock(1, 250);
