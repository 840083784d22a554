# frozen_string_literal: true

# The contract every backend keeps (spec/contract/), run against every
# backend registered under spec/contract/backends/ (one file per store).
require_relative "contract/a_megamutex_backend"

RSpec.describe "The MegaMutex contract" do
  ContractBackend.names.each { |name| it_behaves_like "a MegaMutex backend", name }
end
