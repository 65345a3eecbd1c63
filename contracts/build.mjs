// Compile ProvenanceAnchor.sol with the pinned solc from npm and write the committed artifacts
// ProvenanceAnchor.abi.json and ProvenanceAnchor.bin (so tests and users need no compiler).
//
//   npm ci && node build.mjs           write the artifacts
//   node build.mjs --check             exit 1 if the committed artifacts differ from a fresh build
//
// evmVersion is pinned to "london": solc's newer defaults (shanghai and later) emit PUSH0 (EIP-3855),
// which a london-fork chain such as our Besu QBFT genesis rejects as an invalid opcode.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const NAME = "ProvenanceAnchor";
export const EVM_VERSION = "london";

const input = {
  language: "Solidity",
  sources: { [`${NAME}.sol`]: { content: readFileSync(join(here, `${NAME}.sol`), "utf8") } },
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 10000 },
    // No metadata hash: the bytecode then depends on the source and settings only, so a rebuild
    // on any machine reproduces the committed .bin byte for byte.
    metadata: { bytecodeHash: "none", appendCBOR: false },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const contract = output.contracts[`${NAME}.sol`][NAME];
const abi = `${JSON.stringify(contract.abi, null, 2)}\n`;
const bin = `${contract.evm.bytecode.object}\n`;

if (process.argv.includes("--check")) {
  const same =
    readFileSync(join(here, `${NAME}.abi.json`), "utf8") === abi &&
    readFileSync(join(here, `${NAME}.bin`), "utf8") === bin;
  console.log(same ? "artifacts match the source" : "artifacts differ from the source: run node build.mjs");
  process.exit(same ? 0 : 1);
}
writeFileSync(join(here, `${NAME}.abi.json`), abi);
writeFileSync(join(here, `${NAME}.bin`), bin);
console.log(`solc ${solc.version()} evmVersion=${EVM_VERSION}: wrote ${NAME}.abi.json, ${NAME}.bin`);
