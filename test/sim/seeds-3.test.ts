/** CI seed budget, block 3 of 4 (see seed-block.ts). */
import { seedBlock } from './seed-block.ts';

seedBlock(501, 250);
