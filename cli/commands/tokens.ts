import { Option, type Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { AccessServiceService, CreateTokenResponse, Role, roleToJSON, TokenInfo } from '../../common/proto/driftline/v1/fleet.js';
import { withConnection } from '../context.js';
import { relativeTime } from '../output.js';

/** viewer < operator < admin; worker stands apart: a training worker's token (`driftline worker --token`), WorkerService only. */
const ROLES = { viewer: Role.ROLE_VIEWER, operator: Role.ROLE_OPERATOR, admin: Role.ROLE_ADMIN, worker: Role.ROLE_WORKER } as const;
const roleName = (role: Role): string =>
  roleToJSON(role)
    .replace(/^ROLE_/, '')
    .toLowerCase();

export function registerTokens(program: Command): void {
  const tokens = program.command('tokens').description('API tokens for operators and training workers (admin only)');

  tokens
    .command('create')
    .description('create a token (viewer, operator or admin for people and services; worker for `driftline worker`); it is shown only once')
    .requiredOption('--name <name>', 'who or what uses the token')
    .addOption(
      new Option('--role <role>', 'what the token may do (worker: WorkerService only, nothing else)').choices(Object.keys(ROLES)).makeOptionMandatory(),
    )
    .action((options: { name: string; role: keyof typeof ROLES }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(AccessServiceService);
        const created = await client.createToken({ name: options.name, role: ROLES[options.role] });
        output.result(CreateTokenResponse.toJSON(created), () => {
          output.line(`created ${roleName(created.role)} token ${created.id}; it is shown only once:`);
          output.line(created.token);
        });
      }),
    );

  tokens
    .command('list')
    .description('list tokens and their roles')
    .action((_options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(AccessServiceService);
        const response = await client.listTokens({});
        output.result({ tokens: response.tokens.map((t) => TokenInfo.toJSON(t)) }, () => {
          const now = systemClock.now();
          output.table(
            ['ID', 'NAME', 'ROLE', 'CREATED', 'REVOKED'],
            response.tokens.map((t) => [t.id, t.name, roleName(t.role), relativeTime(t.createdAtMs, now), t.revoked ? 'yes' : 'no']),
            'No tokens found',
          );
        });
      }),
    );

  tokens
    .command('revoke')
    .description('revoke a token')
    .argument('<id>', 'token id')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(AccessServiceService);
        await client.revokeToken({ id });
        output.result({ id, revoked: true }, () => output.line(`revoked token ${id}`));
      }),
    );
}
