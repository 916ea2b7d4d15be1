fn main() -> std::process::ExitCode {
    evlounge::cli::main()
}
