import { defineTransform } from 'retrace/transform';

/** Labels an order small, medium or large by its USD value. */
export default defineTransform({
  name: 'classify-order',
  requirements: { cpu: 0.1, memoryMb: 64 },
  run(input, params) {
    const order = input.json<{ id: number; usdCents: number }>();
    const large = Number(params.largeCents ?? 10_000);
    const size = order.usdCents >= large ? 'large' : order.usdCents >= large / 10 ? 'medium' : 'small';
    return { json: { ...order, size } };
  },
});
