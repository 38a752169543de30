// The hostile-client helpers live with the reliability suite, which uses them
// too (cli/reliability/raw-client.ts).
export { RawClient, rssMb } from '../../cli/reliability/raw-client.js';
