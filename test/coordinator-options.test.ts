import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { compileCoordinatorOptions } from '../coordinator/coordinator-options.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

describe('coordinator listen addresses', () => {
  it('binds only to loopback (localhost, ::1, all of 127.0.0.0/8) unless --allow-remote', () => {
    for (const host of ['127.0.0.1', '127.0.0.2', '127.255.1.9', 'localhost', '[::1]']) {
      expect(() => compileCoordinatorOptions({ grpc: `${host}:0`, http: '127.0.0.1:0' }), host).not.toThrow();
    }
    for (const host of ['0.0.0.0', '10.1.2.3', '128.0.0.1', '127.300.0.1', '[::]', 'example.com']) {
      let caught: unknown;
      try {
        compileCoordinatorOptions({ grpc: '127.0.0.1:0', http: `${host}:0` });
      } catch (err) {
        caught = err;
      }
      expect(caught, host).toBeInstanceOf(InvalidArgumentError);
      expect((caught as InvalidArgumentError).message, host).toContain('is not a loopback address; pass --allow-remote');
    }
    expect(() => compileCoordinatorOptions({ grpc: '0.0.0.0:0', http: '127.0.0.1:0', allowRemote: true })).not.toThrow();
  });

  it('a coordinator listens on 127.0.0.2 when asked', async () => {
    const tc = await startTestCoordinator({ quiet: true, coordinatorOptions: { grpc: '127.0.0.2:0', http: '127.0.0.2:0' } });
    try {
      expect(tc.grpcAddress).toMatch(/^127\.0\.0\.2:\d+$/);
      const res = await fetch(`${tc.httpUrl}/api/v1/namespaces`, { headers: tc.httpAuth });
      expect(res.status).toBe(200);
    } finally {
      await tc.stop();
    }
  });
});
