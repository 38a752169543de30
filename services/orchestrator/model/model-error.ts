/** A model folder that cannot be loaded: names the file and, where it applies, the tensor. */
export class ModelLoadError extends Error {
  readonly code = 'INVALID_ARGUMENT';
  constructor(
    readonly file: string,
    message: string,
    readonly tensor?: string,
  ) {
    super(`${file}${tensor ? ` [${tensor}]` : ''}: ${message}`);
    this.name = 'ModelLoadError';
  }
}
