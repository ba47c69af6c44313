// The seeded random source moved to common/ so the trainers and the federated learner share it with the demo.
export { seededRandom, type SeededRandom } from '../../common/seeded-random.js';
