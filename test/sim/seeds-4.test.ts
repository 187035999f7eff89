/** CI seed budget, block 4 of 4 (see seed-block.ts). */
import { seedBlock } from './seed-block.ts';

seedBlock(751, 250);
