"""Walk one route of a synthetic city with the oracle and show it: `python -m tasks.virl.show --city-seed 0
--out DIR` prints the city, the route's instruction and every observation and action, and saves the view grid
of every decision (DIR/step_XXX.png), a top-down map with the route (DIR/map.png) and the route in the reference
JSON layout (DIR/route_infos.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from tasks.virl.city import generate_city, generate_routes
from tasks.virl.config import VirlConfig
from tasks.virl.episode import oracle_response, reset, step
from tasks.virl.loader import write_dataset
from tasks.virl.prompts import format_instruction
from tasks.virl.render import CityViews, draw_map
from tasks.virl.styles import CITY_STYLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.virl.show", description=__doc__.split("\n")[0])
    parser.add_argument("--city-seed", type=int, default=0)
    parser.add_argument("--route-index", type=int, default=0, help="which of the city's generated routes")
    parser.add_argument("--style", choices=sorted(CITY_STYLES), default=None)
    parser.add_argument("--action-space", choices=("absolute", "relative"), default="absolute")
    parser.add_argument("--view-size", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0, help="rail seed (dropped interpolated points)")
    parser.add_argument("--no-images", action="store_true", help="text only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.route_index < 0:
        parser.error("--route-index must be >= 0")

    config = VirlConfig(action_space=args.action_space, modality="language" if args.no_images else "vision",
                        view_size=args.view_size, seed=args.seed)
    city = generate_city(args.city_seed, args.style)
    route = generate_routes(city, args.route_index + 1, args.city_seed)[args.route_index]
    views = CityViews(city, config.view_size, config.separator_px, config.landmark_radius_m)
    state = reset(route, config, views=None if args.no_images else views)
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"City {city.name} (style {city.style.name}, seed {args.city_seed}): {len(city.nodes)} intersections, "
          f"{len(city.edges)} street segments, {len(city.landmarks)} landmarks, {len(city.places)} places")
    print(f"Route {route.start.name} -> {route.dest.name}, {sum(route.distances_m):.0f} m, "
          f"{len(route.milestones)} steps, {len(state.rail)} decisions\n")
    print(format_instruction(route) + "\n")
    while not state.done:
        point = state.point
        if not args.no_images:
            Image.fromarray(state.conversation[0].image).save(args.out / f"step_{point.index:03d}.png")
        state, transition = step(state, oracle_response(state))
        print(f"O_{point.index + 1}: {point.observation}\nA_{point.index + 1}: {point.expected_action}"
              f"   [{transition.verdict.category}, reward {transition.verdict.reward:+g}]")
    print(f"\nRoute solved: {state.solved}")
    Image.fromarray(draw_map(city, route, rail=state.rail)).save(args.out / "map.png")
    write_dataset(args.out, [route])
    print(f"Saved the view grids, map.png and route_infos.json in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
