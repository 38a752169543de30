// Lists a server's services through gRPC server reflection (v1), the way
// grpcurl's `list` does.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);
const protoRoot = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');

export async function listServices(address: string): Promise<string[]> {
  const def = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { includeDirs: [protoRoot], keepCase: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } } };
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const call = (client as unknown as { ServerReflectionInfo: () => grpc.ClientDuplexStream<unknown, { list_services_response?: { service: { name: string }[] } }> }).ServerReflectionInfo();
      call.on('data', (r) => {
        resolve((r.list_services_response?.service ?? []).map((s: { name: string }) => s.name));
        call.end();
      });
      call.on('error', reject);
      call.write({ list_services: '' });
    });
  } finally {
    client.close();
  }
}
