#!/usr/bin/env node
/** The pgmesh command: a thin shell over the library; one file per command. */
import { Command } from 'commander';
import { fail, jsonRequested, noteLogLevelFlag, printJson } from './common.ts';
import { pgmeshVersion } from './self.ts';
import { registerCheck } from './check.ts';
import { registerCluster } from './cluster.ts';
import { registerDdl } from './ddl.ts';
import { registerDemo } from './demo.ts';
import { registerInit } from './init.ts';
import { registerNode } from './node.ts';
import { registerRepair } from './repair.ts';
import { registerSchema } from './schema.ts';
import { registerStart } from './start.ts';
import { registerStatus } from './status.ts';
import { registerTables } from './tables.ts';

const program = new Command('pgmesh')
  .description('active-active replication for unmodified PostgreSQL 16-18')
  .version(pgmeshVersion(), '-V, --version', 'print the version')
  .option('-c, --config <file>', 'cluster configuration (JSON); or set PGMESH_CONFIG')
  .option('--log-level <level>', 'debug, info, warn, error or silent')
  .showHelpAfterError()
  .configureOutput({
    // With --json the error itself is the answer (below): no help text after it.
    writeErr: (text) => (jsonRequested() ? true : process.stderr.write(text)),
    // A mistake on the command line: with --json, the error a script reads on stdout (code USAGE); else commander's text.
    outputError: (text, write) => {
      if (jsonRequested()) printJson({ error: { code: 'USAGE', message: text.trim().replace(/^error: /, '') } });
      else write(text);
    },
  })
  // Exit codes: 0 ok, 1 the operation failed, 2 bad input (configuration, or the command line itself).
  // Subcommands registered below inherit this.
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2))
  .hook('preAction', (command) => noteLogLevelFlag(command.opts<{ logLevel?: string }>().logLevel));

registerCheck(program);
registerInit(program);
registerCluster(program);
registerNode(program);
registerTables(program);
registerRepair(program);
registerStart(program);
registerStatus(program);
registerSchema(program);
registerDdl(program);
registerDemo(program);

program.parseAsync(process.argv).catch(fail);
