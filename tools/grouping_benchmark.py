r"""Time and peak memory of organize's grouping (clusters of unknown pictures, near-duplicates).

  python tools/grouping_benchmark.py --pictures=100000

Synthetic L2-normalised embeddings (768-D, as a ViT-B's; 200 characters, each a random centre
plus noise) go through grouping.cluster at organize's default cut and grouping.near_duplicates.
Prints the seconds of each, the clusters found against the characters (adjusted Rand index) and
the process's peak resident memory.
"""

import argparse
import resource
import time

import numpy as np

from animesion_jax.open_set import grouping


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pictures", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--characters", type=int, default=200)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(args.characters, args.dim))
  labels = rng.integers(0, args.characters, args.pictures)
  embeddings = (centres[labels] + 0.6 * rng.normal(size=(args.pictures, args.dim))).astype(
    np.float32
  )
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  started = time.perf_counter()
  ids = grouping.cluster(embeddings, grouping.DEFAULT_CLUSTER_DISTANCE)
  clustered = time.perf_counter() - started
  started = time.perf_counter()
  grouping.near_duplicates(embeddings)
  compared = time.perf_counter() - started
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(
    f"{args.pictures} pictures ({embeddings.nbytes / 2**20:.0f} MB of embeddings): cluster "
    f"{clustered:.1f} s, {len(set(ids))} clusters, ARI "
    f"{grouping.adjusted_rand_index(ids, labels):.3f}; near_duplicates {compared:.1f} s; "
    f"peak memory {peak:.0f} MB"
  )


if __name__ == "__main__":
  main()
