# frozen_string_literal: true

# The contract every backend keeps (spec/contract/): one line per backend.
# A new store registers a descriptor in spec/contract/backends.rb and adds
# its line here.
require_relative "contract/a_megamutex_backend"

RSpec.describe "The MegaMutex contract" do
  it_behaves_like "a MegaMutex backend", :memcached
  it_behaves_like "a MegaMutex backend", :memory
end
