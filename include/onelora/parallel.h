/* onelora parallel: the process grid and every collective (DESIGN §5). Collectives live only
 * in src/parallel/. */
#ifndef ONELORA_PARALLEL_H
#define ONELORA_PARALLEL_H

typedef struct {
  int world_rank, world_size;
} ol_grid;

void ol_grid_init(int *argc, char ***argv, ol_grid *g);
void ol_grid_finalize(void);
void ol_grid_abort(int code);
/* Ranks in MPI_COMM_WORLD (1 when MPI was not started) */
int ol_grid_world_size(void);

#endif
